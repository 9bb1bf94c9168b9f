"""NIR export/import: type-checked files, exact round trips, snnTorch and Norse importers
reproducing our mean network's spikes, third-party graphs, damaged files."""
from __future__ import annotations

import logging

import h5py
from mesu_snn.errors import FileFormatError
from mesu_snn.filecheck import stamp_h5_digest
import nir
import numpy as np
import pytest
import torch

import mesu_snn as ms
from mesu_snn.export import from_nir, spiking_forward, to_nir
from mesu_snn.export.nir_export import lif_to_nir_params, nir_to_lif_params
from mesu_snn.export.stages import SpikingSequential


def _nir_mlp(sizes=(6, 10, 4), **kw):
    """A SpikingMLP whose neurons follow NIR's reset: to zero, at the spike's step."""
    net = ms.SpikingMLP(list(sizes), reset="zero", **kw)
    for lif in net.neurons:
        lif.reset_delay = False
    return net


def _mean_spikes(model, x):
    ms.set_mode(model, "mean")
    with torch.no_grad():
        return spiking_forward(model, x)[0]


def test_tau_r_convention_inverts():
    beta, scale = np.array([0.0, 0.5, 0.9, 0.99]), np.array([1.0, 1.0, 0.1, 0.01])
    tau, r = lif_to_nir_params(beta, scale, 1e-4)
    np.testing.assert_allclose(tau, 1e-4 / (1 - beta))
    b2, s2 = nir_to_lif_params(tau, r, 1e-4)
    np.testing.assert_allclose(b2, beta, atol=1e-12)
    np.testing.assert_allclose(s2, scale, atol=1e-12)
    with pytest.raises(ValueError, match="beta"):
        lif_to_nir_params(1.0, 1.0)
    with pytest.raises(ValueError, match="dt"):
        nir_to_lif_params(1e-5, 1.0, 1e-4)


def test_mlp_file_type_checks_and_round_trips(tmp_path):
    net = _nir_mlp()
    with torch.no_grad():
        net.layers[0].weight_sigma.uniform_(0.01, 0.2)
    path = to_nir(net, tmp_path / "mlp.nir")
    g = nir.read(path, type_check=True)
    kinds = sorted(type(n).__name__ for n in g.nodes.values())
    assert kinds == ["Affine", "Affine", "Input", "LIF", "LIF", "Output"]
    lif = next(n for n in g.nodes.values() if isinstance(n, nir.LIF))
    assert lif.metadata["reset"] == "zero" and float(lif.metadata["dt"]) == 1e-4
    np.testing.assert_allclose(lif.tau, 1e-4 / (1 - np.float32(0.9)), rtol=1e-6)
    back = from_nir(path)
    assert type(back) is ms.SpikingMLP
    a, b = net.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [n.params for n in back.neurons] == [n.params for n in net.neurons]
    x = torch.rand(12, 3, 6)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(net(x, samples=4, generator=g1), back(x, samples=4, generator=g2))


def test_round_trip_keeps_subtract_reset_and_refuses_overwrite(tmp_path):
    net = ms.SpikingMLP([5, 7, 3], beta=0.8, threshold=0.7, surrogate=("atan", 2.0))
    with pytest.warns(UserWarning, match="reset"):
        path = to_nir(net, tmp_path / "m.nir")
    back = from_nir(path)
    assert back.neurons[0].reset == "subtract" and back.neurons[0].reset_delay
    assert back.neurons[0].surrogate == ms.ATan(2.0)
    x = torch.rand(15, 2, 5) * 3
    assert torch.equal(_mean_spikes(net, x), _mean_spikes(back, x))
    with pytest.raises(FileExistsError, match="force"):
        to_nir(net, path)
    to_nir(_nir_mlp((5, 7, 3)), path, force=True)
    assert from_nir(path).neurons[0].reset == "zero"


def test_convnet_round_trip(tmp_path):
    net = ms.SpikingConvNet((2, 8, 8), (2, 4, 6), 5, reset="zero")
    path = to_nir(net, tmp_path / "conv.nir")
    g = nir.read(path, type_check=True)
    assert {"Conv2d", "AvgPool2d", "Flatten"} <= {type(n).__name__ for n in g.nodes.values()}
    back = from_nir(path)
    assert type(back) is ms.SpikingConvNet
    x = torch.rand(6, 2, 2, 8, 8) * 4
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(net(x, samples=2, generator=g1), back(x, samples=2, generator=g2))
    seq = from_nir(path, as_sequential=True)
    assert torch.equal(_mean_spikes(net, x), _mean_spikes(seq, x))


def test_snntorch_importer_reproduces_mean_network_spikes(tmp_path):
    from snntorch import utils as snn_utils
    from snntorch.import_nir import import_from_nir
    torch.manual_seed(1)
    net = _nir_mlp((6, 16, 4))
    with torch.no_grad():
        for layer in net.layers:
            layer.weight_mu.mul_(3.0)
    x = torch.rand(30, 5, 6) * 2
    ours = _mean_spikes(net, x)
    assert 0 < ours.sum() < ours.numel()                 # a non-trivial spike pattern
    path = to_nir(net, tmp_path / "snn.nir")
    theirs = import_from_nir(nir.read(path, type_check=True))
    snn_utils.reset(theirs)
    out = []
    for t in range(x.shape[0]):
        o = theirs(x[t])
        out.append(o[0] if isinstance(o, tuple) else o)
    assert torch.equal(torch.stack(out), ours)


def test_norse_importer_reproduces_mean_network_spikes(tmp_path):
    import norse.torch as norse
    torch.manual_seed(2)
    dt = 1e-4
    net = ms.SpikingMLP([6, 16, 4])
    net.neurons = torch.nn.ModuleList(ms.LIF.norse_box(tau_mem_inv=1000.0, v_th=0.1, dt=dt) for _ in range(2))
    x = torch.rand(40, 5, 6) * 10
    ours = _mean_spikes(net, x)
    assert 0 < ours.sum() < ours.numel()
    path = to_nir(net, tmp_path / "norse.nir", dt=dt)
    g = nir.read(path, type_check=True)
    assert all(np.allclose(n.r, 1.0) for n in g.nodes.values() if isinstance(n, nir.LIF))
    theirs = norse.from_nir(g, dt=dt)
    state, out = None, []
    for t in range(x.shape[0]):
        o, state = theirs(x[t], state)
        out.append(o)
    assert torch.equal(torch.stack(out), ours)


def test_graph_made_by_snntorch_loads_and_matches_its_importer(tmp_path):
    import snntorch as snn
    from snntorch import utils as snn_utils
    from snntorch.export_nir import export_to_nir
    from snntorch.import_nir import import_from_nir
    torch.manual_seed(3)
    leaky = lambda n: snn.Leaky(beta=torch.full((n,), 0.8), threshold=torch.full((n,), 0.5), init_hidden=True)
    src = torch.nn.Sequential(torch.nn.Linear(5, 9), leaky(9), torch.nn.Linear(9, 3), leaky(3))
    with torch.no_grad():
        src[0].weight.mul_(4.0)
        src[2].weight.abs_().mul_(2.0)
    graph = export_to_nir(src, torch.randn(5))          # unbatched sample: snnTorch's type inference needs it
    nir.write(tmp_path / "snntorch.nir", graph)
    with pytest.raises(ValueError, match="sigma"):
        from_nir(tmp_path / "snntorch.nir")
    ours = from_nir(tmp_path / "snntorch.nir", sigma=0.05)
    assert isinstance(ours, SpikingSequential)
    assert all(torch.all(s.weight_sigma == 0.05) for s in ours.stages if hasattr(s, "weight_sigma"))
    x = torch.rand(25, 4, 5) * 3
    ref = import_from_nir(nir.read(tmp_path / "snntorch.nir"))
    snn_utils.reset(ref)
    out = [ref(x[t]) for t in range(x.shape[0])]
    ref_spikes = torch.stack([o[0] if isinstance(o, tuple) else o for o in out])
    assert ref_spikes.sum() > 0
    assert torch.equal(_mean_spikes(ours, x), ref_spikes)


def test_nir_reference_graphs_load(tmp_path, caplog):
    import norse.torch as norse
    n_in, n_hid = 4, 6
    rng = np.random.default_rng(0)
    # Affine -> LIF with Norse-style r = 1, tau 1 ms (NIR's documentation example, sized down)
    g = nir.NIRGraph.from_list(
        nir.Affine(weight=rng.normal(size=(n_hid, n_in)).astype(np.float32) * 5, bias=np.zeros(n_hid, np.float32)),
        nir.LIF(tau=np.full(n_hid, 1e-3), r=np.ones(n_hid), v_leak=np.zeros(n_hid), v_threshold=np.full(n_hid, 0.2)))
    nir.write(tmp_path / "lif.nir", g)
    ours = from_nir(tmp_path / "lif.nir", sigma=0.01)
    x = torch.rand(30, 3, n_in) * 4
    with caplog.at_level(logging.ERROR):
        ref = norse.from_nir(nir.read(tmp_path / "lif.nir"), dt=1e-4)
    state, out = None, []
    for t in range(x.shape[0]):
        o, state = ref(x[t], state)
        out.append(o)
    ref_spikes = torch.stack(out)
    assert ref_spikes.sum() > 0 and torch.equal(_mean_spikes(ours, x), ref_spikes)
    # Linear -> IF
    g = nir.NIRGraph.from_list(nir.Linear(weight=np.eye(3, dtype=np.float32)),
                               nir.IF(r=np.ones(3), v_threshold=np.full(3, 2.5)))
    nir.write(tmp_path / "if.nir", g)
    m = from_nir(tmp_path / "if.nir", sigma=0.1)
    s = _mean_spikes(m, torch.ones(6, 1, 3))
    assert s[:, 0, 0].tolist() == [0, 0, 1, 0, 0, 1]       # integrate 1 per step, fire above 2.5, reset to 0
    # a recurrent graph is refused with a clear message
    lif = nir.LIF(tau=np.full(3, 1e-3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    rec = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([3])}), "lif": lif,
                              "w": nir.Linear(weight=np.eye(3)), "output": nir.Output(output_type={"output": np.array([3])})},
                       edges=[("input", "lif"), ("lif", "w"), ("w", "lif"), ("lif", "output")])
    nir.write(tmp_path / "rec.nir", rec)
    with pytest.raises(ValueError, match="rec.nir.*feed-forward"):
        from_nir(tmp_path / "rec.nir", sigma=0.1)


def test_damaged_and_foreign_files_give_one_clear_error(tmp_path):
    good = to_nir(_nir_mlp(), tmp_path / "good.nir")
    data = good.read_bytes()
    (tmp_path / "trunc.nir").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"trunc\.nir.*(corrupt|truncated)"):
        from_nir(tmp_path / "trunc.nir")
    (tmp_path / "text.nir").write_text("not hdf5 at all\n")
    with pytest.raises(ValueError, match=r"text\.nir"):
        from_nir(tmp_path / "text.nir")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ValueError, match=r"foreign\.h5.*not a NIR graph"):
        from_nir(tmp_path / "foreign.h5")
    bad = tmp_path / "bad.nir"
    bad.write_bytes(data)
    with h5py.File(bad, "r+") as f:                       # a LIF that lost its time constant
        lif = next(k for k in f["node/nodes"] if f[f"node/nodes/{k}/type"][()] == b"LIF")
        del f[f"node/nodes/{lif}/tau"]
    with pytest.raises(FileFormatError, match=r"bad\.nir: checksum mismatch"):   # our files carry a SHA-256
        from_nir(bad)
    with h5py.File(bad, "r+") as f:                       # as a crafted file would: checksum made to fit
        stamp_h5_digest(f)
    with pytest.raises(ValueError, match=r"bad\.nir.*damaged"):
        from_nir(bad)
    with pytest.raises(FileNotFoundError, match="missing"):
        from_nir(tmp_path / "missing.nir")
