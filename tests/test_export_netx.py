"""Lava netx HDF5 export (mesu_snn/export/netx.py) and the fixed-point Loihi CUBA model
(mesu_snn/export/loihi_fixed.py).

Lava itself is not installable on Python 3.11 (lava-nc 0.10 and lava-dl 0.6 declare
Python < 3.11), so what is checked here always is: (1) the file has every key, type, dtype and
shape that ``lava.lib.dl.netx.hdf5.Network`` and ``netx.utils.NetDict`` read, and the stored
weights pass netx's ``optimize_weight_bits`` and Dense's clip/truncate unchanged (that logic is
restated below from Lava's code); (2) our float network with the exported parameters and the
numpy fixed-point model of Lava's bit-accurate CUBA update agree spike for spike. (3) With
MESU_SNN_LAVA_PYTHON naming a Python 3.10 that has Lava (built for this check with
``pip install --no-deps lava-dl==0.6.0 torch==2.13.0 torchvision==0.28.0 triton==3.7.1`` plus
torch's CUDA runtime packages, then ``pip install lava-nc==0.10.0 h5py``; lava-dl pins torch < 2.4,
netx runs with 2.13), the last test runs Lava itself on our files."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import mesu_snn as ms
from mesu_snn.errors import ChipConstraintError
from mesu_snn.export.loihi_fixed import membrane_bound, run_fixed
from mesu_snn.export.netx import (BIAS_MAX, BIAS_MIN, VTH_MAX, WEIGHT_MAX, WEIGHT_MIN, chip_float_model,
                                  loihi_layers, netx_incompatibilities, read_netx, to_netx)
from mesu_snn.export.stages import Flatten, SpikingSequential, spiking_forward


def _loihi_mlp(sizes=(12, 20, 5), beta=0.9, bias=True, gain=2.0, seed=0):
    """A SpikingMLP in the convention Loihi runs: reset to 0 at the spike's step, count readout."""
    torch.manual_seed(seed)
    net = ms.SpikingMLP(list(sizes), beta=beta, reset="zero", readout="count", bias=bias)
    for lif in net.neurons:
        lif.reset_delay = False
    with torch.no_grad():
        for layer in net.layers:
            layer.weight_mu.mul_(gain)
    return net


def _loihi_convnet(beta, seed=8):
    """A SpikingConvNet (2, 8, 8) -> (4, 6) channels -> 5 in Loihi's convention, weights ×3."""
    torch.manual_seed(seed)
    net = ms.SpikingConvNet((2, 8, 8), (2, 4, 6), 5, beta=beta, reset="zero", readout="count")
    for lif in list(net.neurons) + [net.out_neuron]:
        lif.reset_delay = False
    with torch.no_grad():
        for layer in (*net.convs, net.fc):
            layer.weight_mu.mul_(3.0)
    return net


def _spikes(t, b, n, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(t, b, n, generator=g) < p).float()


def _float_chip(path, x):
    net = chip_float_model(path).mean_mode()
    with torch.no_grad():
        return spiking_forward(net, x, layer_delay=1)[0].numpy().astype(bool)


# ------------------------------------------------------------- the file, as netx reads it
def _netx_effective_weights(w: np.ndarray) -> np.ndarray:
    """What Lava's Dense applies for a stored netx weight matrix (mixed-sign path), restated
    from lava-dl netx/utils.py optimize_weight_bits and lava proc/dense (clip_weights,
    truncate_weights, the weight_exp shift of the accumulated activation), per unit input."""
    mx, mn = w.max(), w.min()
    scale = min(127 / mx if mx > 0 else np.inf, -128 / mn if mn < 0 else np.inf)
    scale_bits = int(np.floor(np.log2(scale))) + 1
    n = 8
    while n > 0 and np.any(w / 2 ** n != np.round(w / 2 ** n)):
        n -= 1
    n -= 1
    num_bits, exp = 8 - scale_bits - n, -scale_bits
    wm = np.left_shift(w.astype(np.int64), scale_bits)
    wm = np.clip(wm, -256, 255)                                   # clip_weights(MIXED, 8)
    drop = 8 - num_bits + 1                                       # truncate_weights(MIXED)
    wm = (wm >> drop) << drop
    # one input at a time: the activation a = (w_mant·1) shifted by weight_exp
    return np.left_shift(wm, exp) if exp > 0 else np.right_shift(wm, -exp)


def test_file_has_what_the_netx_reader_reads(tmp_path):
    net = _loihi_mlp((12, 20, 7, 5))
    path = to_netx(net, tmp_path / "m.net")
    with h5py.File(path, "r") as f:
        assert sorted(f["layer"].keys()) == ["0", "1", "2"]
        prev = 12
        for i in range(3):
            g = f[f"layer/{i}"]
            assert g["type"].dtype == np.dtype("S10") and g["type"].shape == (1,)
            assert g["type"][0].decode("ascii") == "dense"                    # NetDict: str key, value[0]
            shape = g["shape"][()]
            w = g["weight"][()]
            assert np.issubdtype(w.dtype, np.integer) and w.ndim == 2
            assert (int(np.prod(shape)), prev) == w.shape                      # create_dense: shape = prod(shape)
            assert int(g["inFeatures"][()]) == prev and int(g["outFeatures"][()]) == w.shape[0]
            assert WEIGHT_MIN <= w.min() and w.max() <= WEIGHT_MAX and np.abs(w).max() == 127
            np.testing.assert_array_equal(_netx_effective_weights(w), w)       # netx's re-encoding is exact
            b = g["bias"][()]
            assert np.issubdtype(b.dtype, np.integer) and b.shape == (w.shape[0],)
            assert BIAS_MIN <= b.min() and b.max() <= BIAS_MAX
            n = g["neuron"]
            assert n["type"][0].decode("ascii") == "CUBA"
            assert sorted(n.keys()) == ["gradedSpike", "iDecay", "refDelay", "type", "vDecay", "vThMant"]
            assert int(n["iDecay"][()]) == 4096 and 0 <= int(n["iDecay"][()]) - 1 <= 4095   # du = iDecay − 1
            assert int(n["vDecay"][()]) == round(4096 * (1 - 0.9)) and bool(n["gradedSpike"][()]) is False
            assert 1 <= int(n["vThMant"][()]) <= VTH_MAX
            prev = w.shape[0]
        assert int(f["simulation/Ts"][()]) == 1
        ours = f["mesu_snn"]
        assert ours.attrs["format"] == "mesu_snn netx" and ours.attrs["n_layers"] == 3
        g = ours["layer/0"]
        np.testing.assert_array_equal(g["weight_mu"][()], net.layers[0].weight_mu.detach().numpy())
        # the grid: weight·scale ≈ μ·g/θ (g = 1, θ = 1 here), to half a step
        err = np.abs(f["layer/0/weight"][()] * g.attrs["scale"] - g["weight_mu"][()])
        assert err.max() <= g.attrs["scale"] / 2 + 1e-7
        assert int(f["layer/0/neuron/vThMant"][()]) == round(1 / g.attrs["scale"])
        np.testing.assert_allclose(g["weight_sigma"][()], net.layers[0].weight_sigma.detach().numpy() / g.attrs["scale"],
                                   rtol=1e-6)


# ------------------------------------------------------------- float model = fixed-point model
def test_integrate_and_fire_network_is_bit_exact_with_biases(tmp_path):
    """β = 1 (vDecay = 0): no truncation anywhere, so the float network with the exported
    parameters and Lava's integer update agree exactly, biases and the one-step-per-layer
    delay included (spiking_forward(..., layer_delay=1))."""
    net = _loihi_mlp((12, 24, 16, 6), beta=1.0)
    path = to_netx(net, tmp_path / "if.net")
    x = torch.cat([_spikes(40, 6, 12), torch.zeros(3, 6, 12)])      # 3 layers: 3 more steps to drain
    ours = _float_chip(path, x)
    chip = run_fixed(path, x.numpy().astype(np.int64))
    assert 0 < chip.spikes.sum() < chip.spikes.size
    np.testing.assert_array_equal(ours, chip.spikes)
    assert chip.wraps == chip.clips == chip.a_overflow == 0


def test_bias_free_network_is_the_float_network_delayed_one_step_per_layer(tmp_path):
    """Without biases a layer with no input stays silent, so the chip's output is the
    delay-free float network's output shifted by L steps (L = number of layers)."""
    net = _loihi_mlp((10, 16, 4), beta=1.0, bias=False, gain=3.0, seed=1)
    path = to_netx(net, tmp_path / "nb.net")
    x = _spikes(30, 5, 10, seed=1)
    fl = chip_float_model(path).mean_mode()
    with torch.no_grad():
        ours = spiking_forward(fl, x)[0].numpy().astype(bool)
    chip = run_fixed(path, x.numpy().astype(np.int64), steps=32).spikes
    assert ours.sum() > 0
    np.testing.assert_array_equal(chip[2:], ours)
    assert not chip[:2].any()


def _teacher_forced_layer(lin, lif, s_in, chip_v, chip_s, bound):
    """One float layer on the chip's own input spikes s_in (T, B, in), with the synapse's delay.
    Asserts |v_chip − v_float| < bound and equal spikes off the margin while a neuron's spikes
    have agreed; returns how many neurons met a near-threshold disagreement."""
    t_len, b = s_in.shape[:2]
    with torch.no_grad():
        x = torch.from_numpy(s_in.astype(np.float32))
        cur = lin(torch.cat([torch.zeros(1, b, x.shape[-1]), x[:-1]]), samples=1)[0]
        s_f, v_post = lif(cur, return_membrane=True)
    v_chip = chip_v / 64.0                                    # pre-reset, in weight steps
    prev = torch.zeros_like(v_post[0])
    agree = np.ones(prev.shape, bool)                         # neurons whose spikes have agreed so far
    for t in range(t_len):
        v_pre = (lif.beta.item() * prev + cur[t]).numpy()
        assert np.all(np.abs(v_chip[t] - v_pre)[agree] < bound)
        near = np.abs(v_pre - lif.threshold.item()) <= bound
        same = s_f[t].numpy().astype(bool) == chip_s[t]
        assert np.all(same[agree & ~near])
        agree &= same
        prev = v_post[t]
    return int((~agree).sum())


@pytest.mark.parametrize("beta", [0.9, 0.5])
def test_leaky_network_agrees_up_to_the_truncation_margin(tmp_path, beta):
    """β < 1: Loihi truncates the decayed membrane to 2⁻⁶ of a weight step. Each layer fed the
    chip's own input spikes: |v_chip/2⁶ − v_float| < 2⁻⁶/(1 − β) while its spikes agree, and
    they agree wherever the float membrane is farther than that from the threshold. A network
    where no membrane comes that close gives identical output spikes."""
    exact = 0
    for seed in range(4):
        net = _loihi_mlp((12, 20, 5), beta=beta, seed=seed)
        path = to_netx(net, tmp_path / f"l{seed}.net", force=True)
        x = torch.cat([_spikes(40, 8, 12, seed=seed), torch.zeros(2, 8, 12)])
        chip = run_fixed(path, x.numpy().astype(np.int64), record=True)
        fl = chip_float_model(path).mean_mode()
        bound = membrane_bound(read_netx(path)[0].v_decay) + 1e-4            # + float32 rounding
        inputs = [x.numpy()] + chip.layer_spikes[:-1]
        misses = sum(_teacher_forced_layer(fl.stages[2 * k], fl.stages[2 * k + 1], inputs[k], chip.layer_v[k],
                                           chip.layer_spikes[k], bound) for k in range(2))
        assert 0 < chip.spikes.sum()
        ours = _float_chip(path, x)
        if misses == 0:
            np.testing.assert_array_equal(ours, chip.spikes)
            exact += 1
        else:                                                   # a near-threshold event: a few spikes move
            assert (ours != chip.spikes).mean() < 0.02
    assert exact >= 2


def test_per_neuron_thresholds_and_input_scale_fold_into_the_rows_exactly(tmp_path):
    """θ_i and g are folded into each row (one vThMant per layer); with weights on the grid the
    chip's float network is the trained network spike for spike."""
    torch.manual_seed(3)
    th = torch.tensor([0.5, 1.0, 2.0, 1.0, 0.5, 2.0, 1.0, 4.0])
    net = SpikingSequential([ms.BayesLinear(10, 8), ms.LIF(beta=1.0, threshold=th, reset="zero", reset_delay=False,
                                                         input_scale=0.5)], (10,))
    with torch.no_grad():
        ints = torch.randint(-127, 128, (8, 10)).float()
        ints[0, 0] = 127
        net.stages[0].weight_mu.copy_(ints * th[:, None] / 0.5 / 16)           # μ·g/θ = ints/16
        net.stages[0].bias_mu.copy_(torch.randint(-20, 20, (8,)).float() * th / 0.5 / 16)
    layers = loihi_layers(net)
    assert layers[0].v_th == 16 and np.abs(layers[0].weight).max() == 127
    np.testing.assert_array_equal(layers[0].weight, ints.numpy())
    path = to_netx(net, tmp_path / "fold.net")
    x = _spikes(25, 4, 10, p=0.5)
    ms.set_mode(net, "mean")
    with torch.no_grad():
        trained = spiking_forward(net, x, layer_delay=1)[0].numpy().astype(bool)
    chip = run_fixed(path, x.numpy().astype(np.int64)).spikes
    assert trained.sum() > 0
    np.testing.assert_array_equal(trained, chip)


# ------------------------------------------------------------- refusals and warnings
def test_every_violation_in_one_error_and_nothing_written(tmp_path):
    net = ms.SpikingMLP([6, 8, 3], reset="zero")
    net.neurons[0] = ms.LIF(beta=torch.linspace(0.5, 0.9, 8), reset="zero")
    net.neurons[1].v_leak = 0.2
    out = tmp_path / "bad.net"
    with pytest.raises(ChipConstraintError) as e:
        to_netx(net, out)
    msg = str(e.value)
    assert "per-neuron β" in msg and "v_leak" in msg and len(e.value.violations) == 2
    assert isinstance(e.value, ValueError) and not out.exists() and not list(tmp_path.iterdir())
    conv = ms.SpikingConvNet((2, 6, 6), (2, 4, 4), 3, reset="zero")      # the second pooling sees a 3×3 map
    with pytest.raises(ChipConstraintError, match="multiples of 2"):
        to_netx(conv, out)
    assert not out.exists()


def test_reset_and_readout_warn_or_refuse_when_strict(tmp_path):
    net = ms.SpikingMLP([6, 8, 3], beta=0.8)                    # subtract reset, membrane readout
    issues = netx_incompatibilities(net)
    assert any("reset='subtract'" in i for i in issues) and any("readout" in i for i in issues)
    with pytest.warns(UserWarning, match="different neuron"):
        to_netx(net, tmp_path / "w.net")
    with pytest.raises(ChipConstraintError, match="reset"):
        to_netx(net, tmp_path / "s.net", strict=True)
    with pytest.raises(FileExistsError, match="force"):
        to_netx(_loihi_mlp(), tmp_path / "w.net")
    assert netx_incompatibilities(_loihi_mlp()) == []


def test_sigma_and_realisations_share_the_mean_networks_grid(tmp_path):
    net = _loihi_mlp((8, 12, 4))
    with torch.no_grad():
        net.layers[0].weight_sigma.fill_(0.05)
    path = to_netx(net, tmp_path / "r.net", realisations=3, seed=7)
    mean_layers = read_netx(path)
    with h5py.File(path, "r") as f:
        assert sorted(f["mesu_snn/realisations"].keys()) == ["0", "1", "2"]
        w0 = f["mesu_snn/realisations/0/layer/0/weight"][()]
        assert w0.dtype == np.int32 and w0.shape == mean_layers[0].weight.shape
        assert np.abs(w0).max() <= 127 and not np.array_equal(w0, mean_layers[0].weight)
        assert f["mesu_snn"].attrs["realisation_seed"] == 7
    r1 = read_netx(path, realisation=1)
    assert r1[0].v_th == mean_layers[0].v_th and not np.array_equal(r1[0].weight, mean_layers[0].weight)
    x = _spikes(20, 3, 8).numpy().astype(np.int64)
    assert run_fixed(path, x, realisation=1).spikes.shape == (20, 3, 4)
    with pytest.raises(ValueError, match="no realisation 5"):
        read_netx(path, realisation=5)


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_folded_pooling_is_the_pooling_then_the_layer(kind):
    """Average pooling k×k then a layer = one layer on the unpooled map with each weight
    repeated over a k×k block and divided by k² (conv: stride k, padding k·p)."""
    from mesu_snn.export.netx import _fold_pool
    torch.manual_seed(7)
    s = (torch.rand(3, 4, 8, 6) < 0.4).double()                             # (B, C, H, W) spikes
    pooled = torch.nn.functional.avg_pool2d(s, 2)
    if kind == "conv":
        layer = ms.BayesConv2d(4, 5, 3, padding=1).double()
        w = layer.weight_mu.detach().numpy()
        ref = torch.nn.functional.conv2d(pooled, torch.from_numpy(w), padding=1)
        conv = dict(stride=(1, 1), padding=(1, 1))
        wf = _fold_pool(w, layer, (2, (4, 8, 6)), conv, "c", [])
        got = torch.nn.functional.conv2d(s, torch.from_numpy(wf), stride=conv["stride"], padding=conv["padding"])
        assert conv == dict(stride=(2, 2), padding=(2, 2)) and wf.shape == (5, 4, 6, 6)
    else:
        layer = ms.BayesLinear(4 * 4 * 3, 5).double()
        w = layer.weight_mu.detach().numpy()
        ref = pooled.flatten(1) @ torch.from_numpy(w).T
        got = s.flatten(1) @ torch.from_numpy(_fold_pool(w, layer, (2, (4, 8, 6)), {}, "d", [])).T
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_convnet_with_pooling_maps_and_runs_bit_exact(tmp_path):
    """A SpikingConvNet (pooling after each conv, folded) as netx: input, conv, conv (stride 2,
    6×6 kernel), flatten, dense; IF neurons: the fixed-point model equals the float chip network."""
    path = to_netx(_loihi_convnet(beta=1.0), tmp_path / "conv.net")
    with h5py.File(path, "r") as f:
        assert [f[f"layer/{i}/type"][0].decode() for i in range(5)] == ["input", "conv", "conv", "flatten", "dense"]
        assert f["layer/2/weight"].shape == (6, 4, 6, 6) and list(f["layer/2/stride"][()]) == [2, 2]
        assert f["layer/4/weight"].shape == (5, 6 * 4 * 4)
    x = torch.cat([_spikes(20, 3, 2 * 8 * 8).view(20, 3, 2, 8, 8), torch.zeros(3, 3, 2, 8, 8)])
    chip = run_fixed(path, x.numpy().astype(np.int64))
    assert 0 < chip.spikes.sum()
    np.testing.assert_array_equal(_float_chip(path, x), chip.spikes)


def test_strided_conv_chain_is_written_with_input_and_flatten_entries(tmp_path):
    conv = ms.BayesConv2d(2, 4, 3, stride=2, padding=1)
    net = SpikingSequential([conv, ms.LIF(0.9, reset="zero", reset_delay=False), Flatten(3), ms.BayesLinear(64, 3),
                             ms.LIF(0.9, reset="zero", reset_delay=False)], (2, 8, 8))
    path = to_netx(net, tmp_path / "c.net")
    with h5py.File(path, "r") as f:
        kinds = [f[f"layer/{i}/type"][0].decode() for i in range(len(f["layer"]))]
        assert kinds == ["input", "conv", "flatten", "dense"]
        assert list(f["layer/0/shape"][()]) == [2, 8, 8] and list(f["layer/1/shape"][()]) == [4, 4, 4]
        # shape only: lava-dl >= 0.3 reads it as the input shape; a `neuron` group would make it a spiking block
        assert sorted(f["layer/0"].keys()) == ["shape", "type"] and f["layer/0/shape"].dtype == np.int64
        assert f["layer/1/weight"].shape == (4, 2, 3, 3) and list(f["layer/1/stride"][()]) == [2, 2]
        assert int(f["layer/1/groups"][()]) == 1 and f["mesu_snn/layer/1"].attrs["netx_layer"] == 3
    assert [L.kind for L in read_netx(path)] == ["conv", "dense"]
    with pytest.raises(ValueError, match=r"expected input \(T, B, 2, 8, 8\)"):
        run_fixed(path, np.zeros((3, 2 * 8 * 8), np.int64))


def test_damaged_files_name_the_file(tmp_path):
    bad = tmp_path / "x.net"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="x.net.*not a readable HDF5"):
        read_netx(bad)
    with h5py.File(tmp_path / "y.net", "w") as f:
        f.create_dataset("a", data=1)
    with pytest.raises(ValueError, match="not a netx network"):
        read_netx(tmp_path / "y.net")
    with pytest.raises(FileNotFoundError):
        read_netx(tmp_path / "none.net")
    with pytest.raises(ValueError, match="integer inputs"):
        run_fixed(loihi_layers(_loihi_mlp()), np.full((3, 12), 0.5))


_LAVA_SIDE = '''
import sys, numpy as np
from lava.lib.dl.netx import hdf5
from lava.proc.io.source import RingBuffer as Source
from lava.proc.io.sink import RingBuffer as Sink
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.core.run_conditions import RunSteps
for path in sys.argv[1:]:
    x = np.load(path + ".x.npy")                                   # (T, *in) in our (C, H, W) order
    net = hdf5.Network(net_config=path)
    data = x.reshape(x.shape[0], -1).T if x.ndim == 2 else x.transpose(3, 2, 1, 0)   # Lava: (x, y, z, T)
    src, sink = Source(data=data.astype(int)), Sink(shape=net.out.shape, buffer=x.shape[0])
    src.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    net.run(condition=RunSteps(num_steps=x.shape[0]), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
    np.save(path + ".lava.npy", sink.data.get().T.astype(bool))
    net.stop()
'''


def test_lava_runs_our_files_as_the_fixed_point_model_predicts(tmp_path):
    """Lava itself (lava-nc 0.10 + lava-dl 0.6, Python 3.10 only: set MESU_SNN_LAVA_PYTHON to that
    interpreter) loads our netx files with ``netx.hdf5.Network`` and runs them with its
    bit-accurate models (``Loihi2SimCfg(select_tag="fixed_pt")``): the output spikes equal
    :func:`run_fixed`'s, step for step (an IF MLP, a leaky MLP with biases, a leaky conv net
    with its pooling folded)."""
    import os
    import subprocess
    lava_python = os.environ.get("MESU_SNN_LAVA_PYTHON")
    if not lava_python:
        pytest.skip("set MESU_SNN_LAVA_PYTHON to a Python 3.10 with lava-nc 0.10 and lava-dl 0.6 installed")
    nets = {"if": _loihi_mlp((12, 20, 6), beta=1.0), "leaky": _loihi_mlp((12, 20, 6), beta=0.9, seed=1)}
    nets["conv"] = conv = _loihi_convnet(beta=0.9)
    with torch.no_grad():
        conv.fc.weight_mu.mul_(4.0)
    paths, expected = [], {}
    for name, net in nets.items():
        path = to_netx(net, tmp_path / f"{name}.net")
        shape = (2, 8, 8) if name == "conv" else (12,)
        x = np.concatenate([_spikes(30, 1, int(np.prod(shape)), seed=3).view(30, *shape).numpy(),
                            np.zeros((4, *shape))]).astype(np.int64)
        np.save(f"{path}.x.npy", x)
        expected[str(path)] = run_fixed(path, x).spikes[:, 0]
        paths.append(str(path))
    r = subprocess.run([lava_python, "-c", _LAVA_SIDE, *paths], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for path in paths:
        lava = np.load(path + ".lava.npy")
        assert expected[path].sum() > 0
        np.testing.assert_array_equal(lava, expected[path])
