"""Crash anywhere, lose nothing; disk full is one clear error.

* a CI-sized run of the kill harness (scripts/kill_harness.py): real ``mesu-snn train
  --sigma-trace`` subprocesses SIGKILLed inside the first trace flush (before any checkpoint),
  inside a checkpoint write, inside a merge of trace parts and inside the final trace
  assembly (after the last checkpoint); each leaves readable files, resumes, and ends
  bit-identical to an uninterrupted run with no temporary file left;
* the ``.partial`` trace folder: read as one trace (also by ``mesu-snn inspect``), stray
  temporary and covered parts ignored, parts of different runs refused;
* a full disk (a real 200 KiB tmpfs when it can be mounted, else ENOSPC simulated at the
  write): one line naming the path and saying the disk is full, rc 1 (no segfault), earlier
  files intact and loadable.
"""
from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mesu_snn as ms
from mesu_snn.cli import main
from mesu_snn.errors import DiskFullError, MesuError
from mesu_snn.runs import atomic, load_checkpoint, read_trace
from mesu_snn.runs.recorder import SigmaRecorder
from mesu_snn.runs.trace import trace_parts

REPO = Path(__file__).resolve().parents[1]


def _harness():
    spec = importlib.util.spec_from_file_location("kill_harness", REPO / "scripts" / "kill_harness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kill_harness_ci_subset(tmp_path):
    kh = _harness()
    (tmp_path / "run.toml").write_text(kh.CONFIG)
    ref, labels = kh.reference(tmp_path)
    first = lambda prefix: next(i for i, lab in enumerate(labels, 1) if lab.startswith(prefix))
    points = [("h5_open:part_00000000", False),   # inside the first σ-trace flush, before any checkpoint
              ("mid_write:last.pt", True),         # half a checkpoint written; resumed as a separate process
              ("parts_merged", False),             # trace parts merged, covered parts not yet deleted
              ("h5_open:sigma_trace", False)]      # final trace assembly, after the last checkpoint
    for prefix, sub in points:
        k = first(prefix)
        res = kh.kill_point(str(tmp_path), str(ref), {"kind": "hook", "at": k, "label": labels[k - 1]}, sub)
        assert res["killed"], res
        assert res["ok"], res["problems"]


def test_kill_harness_ci_subset_without_trace_and_during_export(tmp_path):
    """A run without --sigma-trace killed inside a checkpoint write, and ``mesu-snn export``
    killed inside a NIR file's HDF5 write and after the first file's rename."""
    kh = _harness()
    ref, labels = kh.reference(tmp_path, "plain")
    assert not any("sigma_trace" in lab or "part_" in lab for lab in labels)
    k = next(i for i, lab in enumerate(labels, 1) if lab.startswith("mid_write:last.pt"))
    res = kh.kill_point(str(tmp_path), str(ref), {"scenario": "plain", "kind": "hook", "at": k, "label": labels[k - 1]})
    assert res["killed"] and res["ok"], res
    ref_export, labels = kh.reference(tmp_path, "export")
    assert sorted(p.name for p in ref_export.glob("*.nir")) == ["model.nir", "model_sample0.nir", "model_sample1.nir"]
    for prefix in ("h5_open:model.nir", "after_rename:model.nir"):
        k = next(i for i, lab in enumerate(labels, 1) if lab.startswith(prefix))
        res = kh.kill_point(str(tmp_path), str(ref_export),
                            {"scenario": "export", "kind": "hook", "at": k, "label": labels[k - 1]})
        assert res["killed"] and res["ok"], res["problems"]


def _net():
    torch.manual_seed(0)
    net = ms.SpikingMLP([6, 5, 2])
    return net, ms.MESU(net, memory=50)


def _steps(net, opt, rec, updates):
    for u in updates:
        loss = ms.nll_loss(net(torch.rand(4, 3, 6), samples=2), torch.randint(0, 2, (3,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.on_update(u, net, opt)


def test_partial_folder_reads_as_one_trace(tmp_path, capsys):
    net, opt = _net()
    path = tmp_path / "sigma_trace.h5"
    rec = SigmaRecorder(path, every=2, n_tracked=3)
    rec.on_start(net, opt, {"rule": "mesu"})
    _steps(net, opt, rec, range(1, 8))
    rec.on_task_end(0, net, opt)
    rec.close()                                                # as a kill would leave it
    partial = tmp_path / "sigma_trace.h5.partial"
    assert partial.is_dir() and not path.exists()
    assert len(trace_parts(partial)) == 5                      # updates 0, 1-2, 3-4, 5-6, 7 + snapshot
    (partial / ".part_00000009.h5.x1y2.tmp").write_bytes(b"half a file")   # a killed writer's temp file
    tr = read_trace(partial)
    assert tr["attrs"]["status"] == "running"
    assert tr["summary_updates"].tolist() == [0, 2, 4, 6]
    assert tr["tracked_updates"].tolist() == list(range(8))
    assert sorted(tr["snapshots"]) == [0] and tr["snapshot_updates"] == {0: 7}
    assert main(["inspect", str(partial)]) == 0
    assert "status running" in capsys.readouterr().out
    assert [p.name for p in atomic.remove_stale_temps(partial)] == [".part_00000009.h5.x1y2.tmp"]
    # a part of another run (updates not increasing) is refused, naming the folder
    shutil.copy(partial / "part_00000001.h5", partial / "part_00000007.h5")
    with pytest.raises(ValueError, match=r"sigma_trace\.h5\.partial.*overlap"):
        read_trace(partial)


def test_merged_parts_cover_the_ones_they_replace(tmp_path, monkeypatch):
    monkeypatch.setattr("mesu_snn.runs.recorder.MERGE_EVERY", 3)
    net, opt = _net()
    rec = SigmaRecorder(tmp_path / "t.h5", every=1, n_tracked=2)
    rec.on_start(net, opt, {})
    _steps(net, opt, rec, range(1, 6))                         # parts 0..5, merged after 2 and 5
    partial = tmp_path / "t.h5.partial"
    assert sorted(p.name for p in partial.glob("part_*.h5")) == ["part_00000002.h5", "part_00000005.h5"]
    full = read_trace(partial)
    assert full["tracked_updates"].tolist() == list(range(6))
    # a kill between writing a merged part and deleting what it covers: stale parts are skipped
    rec2 = SigmaRecorder(tmp_path / "u.h5", every=1, n_tracked=2)
    net2, opt2 = _net()
    rec2.on_start(net2, opt2, {})
    _steps(net2, opt2, rec2, range(1, 3))
    keep = {p.name: p.read_bytes() for p in (tmp_path / "u.h5.partial").glob("part_*.h5")}
    assert sorted(keep) == ["part_00000002.h5"]
    for name in ("part_00000000.h5", "part_00000001.h5"):          # resurrect two covered parts
        shutil.copy(tmp_path / "u.h5.partial" / "part_00000002.h5", tmp_path / "u.h5.partial" / name)
    assert read_trace(tmp_path / "u.h5.partial")["tracked_updates"].tolist() == [0, 1, 2]


def test_resume_from_update_zero_starts_the_trace_afresh(tmp_path):
    net, opt = _net()
    rec = SigmaRecorder(tmp_path / "t.h5", every=2, n_tracked=3)
    rec.on_start(net, opt, {})
    _steps(net, opt, rec, range(1, 4))
    rec.close()
    with pytest.raises(FileExistsError):                        # without resume: never overwritten
        SigmaRecorder(tmp_path / "t.h5", every=2).on_start(net, opt, {})
    rec = SigmaRecorder(tmp_path / "t.h5", every=2, n_tracked=3, resume=True)
    rec.on_start(net, opt, {"resumed": False, "start_update": 0})
    rec.on_end(net, opt)
    tr = read_trace(tmp_path / "t.h5")
    assert tr["tracked_updates"].tolist() == [0] and tr["attrs"]["status"] == "complete"
    assert not (tmp_path / "t.h5.partial").exists()


def test_resume_without_the_partial_trace_is_a_clear_error(tmp_path):
    net, opt = _net()
    with pytest.raises(FileNotFoundError, match=r"t\.h5\.partial is missing"):
        SigmaRecorder(tmp_path / "t.h5", resume=True).on_start(net, opt, {"resumed": True, "start_update": 5})


# ----------------------------------------------------------------- disk full
def test_enospc_in_an_atomic_write_is_one_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    """Simulated: fsync of the temporary file fails with ENOSPC."""
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(DiskFullError, match=r"disk full.*metrics\.json") as e:
        atomic.atomic_write_text(target, "new")
    assert isinstance(e.value, OSError) and isinstance(e.value, MesuError) and e.value.errno == errno.ENOSPC
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]       # no temp file left
    # HDF5 reports a full disk in its own words (RuntimeError/OSError text): also ours
    assert atomic.is_disk_full(RuntimeError("Can't write data (file write failed: errno = 28, error message = "
                                            "'No space left on device')"))


def test_the_free_space_check_refuses_a_trace_part_that_cannot_fit(tmp_path, monkeypatch):
    net, opt = _net()
    rec = SigmaRecorder(tmp_path / "t.h5", every=1, n_tracked=3)
    rec.on_start(net, opt, {})
    before = read_trace(tmp_path / "t.h5.partial")

    class Tiny:
        f_bavail, f_frsize = 10, 4096
    monkeypatch.setattr(atomic.os, "statvfs", lambda p: Tiny)
    with pytest.raises(DiskFullError, match=r"disk full.*t\.h5\.partial/part_00000001\.h5"):
        _steps(net, opt, rec, [1])
    after = read_trace(tmp_path / "t.h5.partial")
    assert after["tracked_updates"].tolist() == before["tracked_updates"].tolist() == [0]


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs (needs root and mount); skips when it cannot be mounted."""
    d = tmp_path / "small"
    d.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(d)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)




def _train(args, cwd, no_precheck=False):
    pre = "import mesu_snn.runs.atomic as a; a.check_free_space = lambda *x: None; " if no_precheck else ""
    code = pre + "import sys; from mesu_snn.cli import main; sys.exit(main())"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MESU_SNN_DATA", None)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("case", ["trace", "trace_no_precheck", "checkpoint"])
def test_full_disk_is_one_clear_error_and_keeps_earlier_files(tmp_path, small_disk, case):
    """Real ENOSPC on a 200 KiB tmpfs: while writing the σ trace (refused by the free-space
    check, or failing inside HDF5 when the check is switched off), or a checkpoint (no trace,
    a larger network)."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(_harness().CONFIG.replace("hidden = [16]", "hidden = [160]" if case == "checkpoint" else "hidden = [16]"))
    out = small_disk / "run"
    args = ["train", cfg, "--out", out, "--quiet"] + ([] if case == "checkpoint" else ["--sigma-trace", "1"])
    r = _train(args, tmp_path, no_precheck=case == "trace_no_precheck")
    assert r.returncode == 1, (r.returncode, r.stderr)                      # not 139 (segfault)
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("mesu-snn: error:") and "disk full" in lines[0] and str(out) in lines[0], lines[0]
    if case == "checkpoint":
        assert "last.pt" in lines[0]
    ck = out / "checkpoints" / "last.pt"
    if ck.exists():
        assert torch.isfinite(load_checkpoint(ck)["model"]["layers.0.weight_mu"]).all()
    partial = out / "sigma_trace.h5.partial"
    if case != "checkpoint":
        tr = read_trace(partial)                                         # every part written is readable
        assert tr["tracked_updates"].tolist() == list(range(len(tr["tracked_updates"])))
        assert len(tr["tracked_updates"]) >= 1
    assert not [p for p in out.rglob("*.tmp")]                           # no temp file left on the disk
