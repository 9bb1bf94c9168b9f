"""SigmaRecorder on a short hand-written MESU loop (no trainer): schema, values, snapshots,
seeded tracking, crash safety, no overwrite."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

import mesu_snn as ms
from mesu_snn.runs.recorder import SigmaRecorder, layer_summary, tracked_indices
from mesu_snn.runs.schema import FORMAT, QUANTILES
from mesu_snn.runs.trace import read_trace


def _loop(path, updates_per_task=(7, 6), every=3, n_tracked=5, seed=0, watch=None):
    """MESU on random 2-class batches, two 'tasks'; returns (model, snapshots, watched values)."""
    torch.manual_seed(0)
    net = ms.SpikingMLP([8, 12, 2], beta=0.8)
    opt = ms.MESU(net, memory=50, sigma_prior=0.1)
    rec = SigmaRecorder(path, every=every, n_tracked=n_tracked, seed=seed)
    rec.on_start(net, opt, {"rule": "mesu", "memory": 50})
    update, snaps, watched = 0, {}, []
    for task, n in enumerate(updates_per_task):
        for _ in range(n):
            x, y = torch.rand(6, 4, 8) * 2, torch.randint(0, 2, (4,))
            loss = ms.nll_loss(net(x, samples=2), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            update += 1
            rec.on_update(update, net, opt)
            if watch is not None:
                watched.append(net.layers[0].weight_sigma.detach().reshape(-1)[watch].clone())
        rec.on_task_end(task, net, opt)
        snaps[task] = {n: (mu.detach().clone(), s.detach().clone()) for n, mu, s in ms.bayesian_pairs(net)}
    rec.on_end(net, opt)
    return net, snaps, watched


def test_trace_schema_and_values(tmp_path):
    path = tmp_path / "sigma_trace.h5"
    idx = tracked_indices(12 * 8, 5, 0, 0)
    net, snaps, watched = _loop(path, watch=torch.from_numpy(idx))
    assert path.exists() and not (tmp_path / "sigma_trace.h5.partial").exists()
    tr = read_trace(path)
    assert tr["attrs"]["format"] == FORMAT and tr["attrs"]["status"] == "complete"
    assert tr["config"] == {"memory": 50, "rule": "mesu"}
    assert {"torch", "h5py", "mesu_snn"} <= set(tr["versions"]) and tr["attrs"]["git_revision"]
    assert tr["summary_updates"].tolist() == [0, 3, 6, 9, 12, 13]        # every 3, plus the final state
    assert tr["tracked_updates"].tolist() == list(range(14))
    assert set(tr["layers"]) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}
    lay = tr["layers"]["layers.0.weight"]
    assert lay["sigma_quantiles"].shape == (6, len(QUANTILES)) and lay["sigma_hist"].shape[0] == 6
    assert np.all(lay["sigma_hist"].sum(1) == 96) and np.all(lay["mu_hist"].sum(1) == 96)
    s_end = net.layers[0].weight_sigma.detach().double()
    assert lay["sigma_mean"][-1] == pytest.approx(float(s_end.mean()), rel=1e-9)
    assert lay["sigma_quantiles"][-1, 3] == pytest.approx(np.quantile(s_end.numpy(), 0.5), rel=1e-9)
    assert lay["sigma_mean"][0] == pytest.approx(0.5 / np.sqrt(8), rel=1e-6)   # σ_init / √fan_in at update 0
    np.testing.assert_array_equal(lay["tracked_index"], idx)
    np.testing.assert_array_equal(lay["tracked_sigma"][1:], torch.stack(watched).numpy())
    assert not np.allclose(lay["tracked_sigma"][0], lay["tracked_sigma"][-1])   # σ moved under MESU
    for task, pairs in snaps.items():
        for name, (mu, s) in pairs.items():
            np.testing.assert_array_equal(tr["snapshots"][task][name]["mu"], mu.numpy())
            np.testing.assert_array_equal(tr["snapshots"][task][name]["sigma"], s.numpy())
    with h5py.File(path) as f:
        d = f["layers/layers.0.weight/tracked_sigma"]
        assert d.maxshape[0] is None and d.chunks is not None and d.compression == "gzip"


def test_every_dataset_has_a_description_and_units(tmp_path):
    """Each dataset of the finished trace, and of a part of a running one, names what it holds
    and its units."""
    from mesu_snn.runs.schema import DATASET_INFO
    path = tmp_path / "sigma_trace.h5"
    _loop(path)
    seen = []

    def check(name, obj):
        if isinstance(obj, h5py.Dataset):
            seen.append(name.rsplit("/", 1)[-1])
            d, u = obj.attrs["description"], obj.attrs["units"]
            assert isinstance(d, str) and len(d) > 10 and isinstance(u, str) and u, name
    with h5py.File(path) as f:
        f.visititems(check)
        assert f["layers/layers.0.weight/sigma_mean"].attrs["units"] == "weight units"
        assert f["summary_updates"].attrs["units"] == "updates"
        assert f["layers/layers.0.weight/sigma_hist"].attrs["units"] == "count"
    assert set(seen) == set(DATASET_INFO)          # every kind of dataset occurs, and each is described
    rec = SigmaRecorder(tmp_path / "running.h5", every=1)
    net = ms.SpikingMLP([4, 3, 2])
    rec.on_start(net, ms.MESU(net, memory=50), {})
    rec.flush()
    part = next((tmp_path / "running.h5.partial").glob("part_*.h5"))
    with h5py.File(part) as f:
        assert f["tracked_updates"].attrs["description"].startswith("optimizer update")


def test_tracked_synapses_are_seeded():
    a, b, c = tracked_indices(1000, 20, 1, 0), tracked_indices(1000, 20, 1, 0), tracked_indices(1000, 20, 2, 0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a)) == 20 and np.all(np.diff(a) > 0)
    assert len(tracked_indices(7, 20, 0, 0)) == 7


def test_layer_summary_pure():
    mu, sigma = np.array([-1.0, 0.0, 1.0, 2.0]), np.array([1e-3, 1e-2, 1e-1, 1e2])
    edges = np.logspace(-6, 1, 8)
    s = layer_summary(mu, sigma, edges, np.linspace(-2, 2, 5))
    assert s["absmu_mean"] == 1.0 and s["mu_mean"] == 0.5
    assert s["sigma_hist"].sum() == 4 and s["sigma_hist"][-1] == 1          # 1e2 clipped into the last bin
    assert s["sigma_quantiles"][0] == 1e-3 and s["sigma_quantiles"][-1] == 1e2
    with pytest.raises(ValueError, match="equal size"):
        layer_summary(mu, sigma[:2], edges, edges)


def test_existing_output_is_not_overwritten(tmp_path):
    path = tmp_path / "t.h5"
    path.write_bytes(b"precious")
    net = ms.SpikingMLP([4, 3])
    with pytest.raises(FileExistsError, match="force"):
        SigmaRecorder(path).on_start(net, None, {})
    assert path.read_bytes() == b"precious"
    rec = SigmaRecorder(path, every=1, force=True)
    rec.on_start(net, None, {})
    rec.on_end(net, None)
    assert read_trace(path)["summary_updates"].tolist() == [0]
    with pytest.raises(ValueError, match="every"):
        SigmaRecorder(tmp_path / "x.h5", every=0)


def test_crash_loses_at_most_the_last_interval(tmp_path):
    """A process killed mid-run (os._exit, no close) leaves a readable .partial file with every
    summary up to the last multiple of ``every``."""
    script = textwrap.dedent(f"""
        import os, torch, mesu_snn as ms
        from mesu_snn.runs.recorder import SigmaRecorder
        torch.manual_seed(0)
        net = ms.SpikingMLP([8, 6, 2]); opt = ms.MESU(net, memory=50)
        rec = SigmaRecorder({str(tmp_path / 'crash.h5')!r}, every=4, n_tracked=3)
        rec.on_start(net, opt, {{}})
        for u in range(1, 11):
            loss = ms.nll_loss(net(torch.rand(5, 3, 8), samples=2), torch.randint(0, 2, (3,)))
            opt.zero_grad(); loss.backward(); opt.step(); rec.on_update(u, net, opt)
        os._exit(3)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert not (tmp_path / "crash.h5").exists()
    tr = read_trace(tmp_path / "crash.h5.partial")
    assert tr["attrs"]["status"] == "running"
    assert tr["summary_updates"].tolist() == [0, 4, 8]
    assert tr["tracked_updates"].tolist() == list(range(9))               # updates 9, 10 lost
    assert json.loads(tr["attrs"]["config"]) == {}


def test_damaged_trace_gives_one_clear_error(tmp_path):
    path = tmp_path / "t.h5"
    _loop(path, updates_per_task=(3,), every=1)
    data = path.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"trunc\.h5.*(corrupt|truncated)"):
        read_trace(tmp_path / "trunc.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(ValueError, match=r"foreign\.h5: not a mesu_snn σ trace"):
        read_trace(tmp_path / "foreign.h5")


def test_resume_after_interruption_drops_rows_past_the_checkpoint(tmp_path):
    """The trainer restarts from its checkpoint (update 8) after dying at update 10: the
    recorder reopens the .partial file, drops updates 9-10 and continues without duplicates."""
    torch.manual_seed(0)
    net = ms.SpikingMLP([6, 5, 2])
    opt = ms.MESU(net, memory=50)
    path = tmp_path / "t.h5"

    def step(u, rec):
        loss = ms.nll_loss(net(torch.rand(4, 3, 6), samples=2), torch.randint(0, 2, (3,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.on_update(u, net, opt)

    rec = SigmaRecorder(path, every=4, n_tracked=3)
    rec.on_start(net, opt, {"rule": "mesu"})
    for u in range(1, 11):
        step(u, rec)
    rec.close()                                                  # the process dies here
    rec2 = SigmaRecorder(path, every=4, n_tracked=3)
    rec2.on_start(net, opt, {"rule": "mesu", "resumed": True, "start_update": 8})
    for u in range(9, 13):
        step(u, rec2)
    rec2.on_task_end(0, net, opt)
    rec2.on_end(net, opt)
    tr = read_trace(path)
    assert tr["summary_updates"].tolist() == [0, 4, 8, 12]
    assert tr["tracked_updates"].tolist() == list(range(13))
    assert tr["layers"]["layers.0.weight"]["tracked_sigma"].shape == (13, 3)
    assert tr["attrs"]["resumed_at"].tolist() == [8] and tr["attrs"]["status"] == "complete"
    np.testing.assert_array_equal(tr["layers"]["layers.0.weight"]["tracked_sigma"][-1],
                                  net.layers[0].weight_sigma.detach().reshape(-1)[
                                      torch.from_numpy(tr["layers"]["layers.0.weight"]["tracked_index"])].numpy())


def test_overwrite_message_is_plain(tmp_path):
    """Refusing to overwrite names the file and the flag, without '(force=True)' clutter."""
    from mesu_snn.runs.atomic import check_writable
    path = tmp_path / "sigma_trace.h5"
    path.write_bytes(b"x")
    net = ms.SpikingMLP([4, 3, 2])
    with pytest.raises(FileExistsError) as e:
        SigmaRecorder(path).on_start(net, ms.MESU(net, memory=50), {})
    with pytest.raises(FileExistsError) as e2:
        check_writable(path)
    for msg in (str(e.value), str(e2.value)):
        assert str(path) in msg and "--force" in msg and "force=True" not in msg and "pass --force (" not in msg
    assert path.read_bytes() == b"x"
