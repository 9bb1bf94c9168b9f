"""Soak: a long task stream through the real trainer with checkpoints and the σ trace on.

``MESU_SNN_SOAK=1 python -m pytest -q -s tests/test_trainer_soak.py`` (or ``-m soak``); the
default run skips it (tests/conftest.py). ≥ 200 permuted tasks of a tiny digits network, a
checkpoint every 8 updates and a σ-trace summary every 2; it asserts that the resident memory
grows by less than :data:`RSS_GROWTH_BOUND` between the first sample (task 25) and the end,
that the finished trace's size is linear in the number of records (the trace cut after 1/4, 2/4,
3/4 and all of the tasks, each written as a finished trace: a straight line within 10 %), and
that the ``.partial`` folder during the run never exceeds twice the finished trace (its size is
a sawtooth: one small file per flush until parts are merged). ``MESU_SNN_SOAK_TASKS`` changes
the number of tasks. It also checks that the per-update log rows (log.csv, the checkpoint's)
have a width independent of the number of tasks. Measured (200 tasks, this 2-core VM under
load): benchmarks/results/soak_2026-12-02.json (7.6 min, before the fixed-width log: checkpoint
2.9 MB) and soak_2026-12-02_fixed_log.json (4.1 min: checkpoint 0.71 MB, log.csv 12 KB).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mesu_snn.callbacks import Callback
from mesu_snn.config import parse_config
from mesu_snn.runs import build_run, load_checkpoint
from mesu_snn.runs.recorder import SigmaRecorder, write_trace_file
from mesu_snn.runs.trace import read_trace

TASKS = int(os.environ.get("MESU_SNN_SOAK_TASKS", "200"))
#: resident-memory growth allowed from task 25 to the end (the accuracy matrix, log rows and
#: trace buffers of 200 tiny tasks are a few MB; a leak of one copy of anything per task is more)
RSS_GROWTH_BOUND = 64 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.glob("part_*.h5")) if path.is_dir() else 0


class Probe(Callback):
    """Samples RSS and the trace's bytes on disk and rows at task ends."""

    def __init__(self, trace: Path, every: int):
        self.trace, self.every, self.samples, self.rows = trace, every, [], 0

    def on_update(self, update, model, optimizer):
        self.rows = update

    def on_task_end(self, task_index, model, optimizer):
        if (task_index + 1) % 25 == 0:
            partial = self.trace.with_name(self.trace.name + ".partial")
            self.samples.append({"task": task_index + 1, "update": self.rows, "rss": rss_bytes(),
                                 "trace_bytes": _size(partial)})


def trace_prefix(t: dict, tasks: int, updates: int) -> dict:
    """The trace ``t`` as it stood after ``updates`` updates (the first ``tasks`` task ends)."""
    s, u = t["summary_updates"] <= updates, t["tracked_updates"] <= updates
    out = {k: t[k] for k in ("attrs", "config", "versions")}
    out["summary_updates"], out["tracked_updates"] = t["summary_updates"][s], t["tracked_updates"][u]
    out["layers"] = {n: {k: (v[u] if k in ("tracked_mu", "tracked_sigma") else v[s]
                             if k not in ("attrs", "tracked_index", "sigma_edges", "mu_edges") else v)
                         for k, v in d.items()} for n, d in t["layers"].items()}
    out["snapshots"] = {k: v for k, v in t["snapshots"].items() if k < tasks}
    out["snapshot_updates"] = {k: v for k, v in t["snapshot_updates"].items() if k < tasks}
    return out


@pytest.mark.slow
@pytest.mark.soak
def test_soak_many_tasks_memory_and_trace_size(tmp_path):
    if not Path("/proc/self/statm").is_file():
        pytest.skip("needs /proc/self/statm to measure memory")
    cfg = parse_config({
        "seed": 0,
        "data": {"dataset": "digits", "train_per_task": 16, "test_per_task": 8},
        "stream": {"kind": "permuted", "n_tasks": TASKS, "batch_size": 8},
        "encoder": {"kind": "current", "num_steps": 2},
        "model": {"hidden": [8]},
        "rule": {"name": "mesu", "memory": 2000.0},
        "schedule": {"train_samples": 1, "eval_samples": 1, "checkpoint_every": 8, "ood": False, "threads": 1,
                     "chance_patience": 0,      # a memory and size test: a tiny net at chance must go on
                     "last_k": 1},
    })
    run = tmp_path / "soak"
    run.mkdir()
    trace = run / "sigma_trace.h5"
    probe = Probe(trace, 2)
    trainer = build_run(cfg, run, callbacks=[SigmaRecorder(trace, every=2, n_tracked=4), probe])
    t0 = time.time()
    metrics = trainer.fit()
    wall = time.time() - t0
    t = read_trace(trace)
    rows = len(t["summary_updates"]) + len(t["tracked_updates"])
    s = probe.samples
    growth = s[-1]["rss"] - s[0]["rss"]
    # the finished trace's bytes against its records, for the trace cut after 1/4 .. 4/4 of the tasks
    per_task = t["tracked_updates"][-1] / TASKS
    cuts = []
    for q in (1, 2, 3, 4):
        k = TASKS * q // 4
        pre = trace_prefix(t, k, int(round(k * per_task)))
        f = write_trace_file(tmp_path / f"cut{q}.h5", pre)
        records = len(pre["summary_updates"]) + len(pre["tracked_updates"]) + len(pre["snapshots"])
        cuts.append({"tasks": k, "records": records, "bytes": f.stat().st_size})
    x = np.array([c["records"] for c in cuts], float)
    y = np.array([c["bytes"] for c in cuts], float)
    slope, icpt = np.polyfit(x, y, 1)
    worst = float(np.max(np.abs(y - (slope * x + icpt)) / y))
    partial_max = max(v["trace_bytes"] for v in s)
    ck = load_checkpoint(run / "checkpoints/last.pt")
    log_bytes, acc_bytes = (run / "log.csv").stat().st_size, (run / "accuracy.csv").stat().st_size
    report = {"tasks": TASKS, "updates": int(t["tracked_updates"][-1]), "trace_rows": rows, "wall_s": round(wall, 1),
              "final_trace_bytes": trace.stat().st_size, "checkpoint_bytes": (run / "checkpoints/last.pt").stat().st_size,
              "log_csv_bytes": log_bytes, "accuracy_csv_bytes": acc_bytes,
              "rss_first_mb": round(s[0]["rss"] / 2**20, 1), "rss_last_mb": round(s[-1]["rss"] / 2**20, 1),
              "rss_growth_mb": round(growth / 2**20, 2), "trace_cuts": cuts, "trace_bytes_per_record": round(slope, 1),
              "trace_linear_fit_worst_rel_err": round(worst, 4), "partial_max_bytes": partial_max, "samples": s}
    print("\nsoak:", json.dumps({k: v for k, v in report.items() if k != "samples"}))
    out = os.environ.get("MESU_SNN_SOAK_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
    assert not metrics["diverged"], metrics["diverged_reason"]
    assert len(metrics["accuracy_matrix"]) == TASKS if "accuracy_matrix" in metrics else True
    assert len(t["snapshots"]) == TASKS
    assert growth < RSS_GROWTH_BOUND, report
    assert worst < 0.10, report
    assert partial_max < 2 * trace.stat().st_size, report
    # the per-update log is O(1) in the number of tasks (the per-task accuracies: accuracy.csv,
    # one row per evaluation, and history, both O(evaluations x tasks))
    assert all(set(r) == set(trainer.LOG_FIELDS) for r in ck["state"]["log_rows"])
    assert log_bytes < 64 * (trainer.n_updates + 1), report
    assert len(ck["state"]["history"]) == len(metrics["accuracy_over_time"]) <= trainer.n_updates
