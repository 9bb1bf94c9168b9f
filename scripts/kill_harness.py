"""Kill harness: SIGKILL real ``mesu-snn train ... --sigma-trace N`` runs (and runs without a
trace, and ``mesu-snn export``) at many points, then check that what they left is readable and
that ``--resume`` (for export: running it again with ``--force``) ends bit-identical to an
uninterrupted run.

Scenarios: ``trace`` (``train --sigma-trace N``, ``--points``/``--timer``), ``plain`` (``train``
without a trace, ``--plain-points``/``--plain-timer``) and ``export`` (``export REF_RUN --bits 8
--samples 2 --out DIR/model.nir``, ``--export-points``/``--export-timer``). For an export kill
point: every ``*.nir`` left is readable and has the same tree (:func:`mesu_snn.filecheck.h5_digest`)
as the uninterrupted export's file of that name, the rerun with ``--force`` succeeds, its
outputs equal the reference's, and no temporary file survives.

Kill points are of two kinds:

* ``hook``: the run is started with ``MESU_SNN_CRASH_AT=K`` and SIGKILLs itself at the K-th
  crash point it passes (:func:`mesu_snn.runs.atomic.crash_point`: before / in the middle of /
  after every atomic write -- checkpoints, σ-trace parts, log, metrics, timing, plots, the
  final trace assembly -- and inside every open HDF5 file). An uninterrupted reference run
  with ``MESU_SNN_CRASH_LOG`` lists every point; every point is used when ``--points`` allows,
  else a stratified choice that covers every kind of point;
* ``timer``: the harness SIGKILLs the run after a random delay once its run directory exists.

For every kill point it checks:

1. the killed run's files are readable: config, checkpoint (``load_checkpoint``), log,
   metrics, and the σ trace (file or ``.partial`` folder) whose rows equal the reference's
   rows for the same updates (readable up to its last flush, nothing altered);
2. ``mesu-snn train --resume`` succeeds (in a worker process, through ``mesu_snn.cli.main``;
   ``--subprocess-resume`` runs it as a separate process as a user would);
3. μ, σ (every tensor of the final checkpoint), metrics.json, log.csv and the σ trace (every
   array, snapshot and the recorded config) are bit-identical to the reference;
4. no temporary file (``*.tmp``) and no ``.partial`` trace folder survives.

Usage::

    python scripts/kill_harness.py --points 120 --timer 20 --workers 2 --out /tmp/kh --json results.jsonl

Prints one line per kill point and a summary (kill points run / passed).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))            # this checkout's mesu_snn, in the harness and its workers

CONFIG = """
seed = 0
[data]
dataset = "digits"
train_per_task = 120
test_per_task = 40
[stream]
kind = "permuted"
n_tasks = 2
epochs_per_task = 1
batch_size = 8
[encoder]
kind = "current"
num_steps = 4
[model]
hidden = [16]
[rule]
name = "mesu"
memory = 10000.0
[schedule]
train_samples = 2
eval_samples = 2
eval_every = 10
checkpoint_every = 4
threads = 1
"""
TRACE_EVERY = 3


def _cmd(*args):
    return [sys.executable, "-c", "import sys; from mesu_snn.cli import main; sys.exit(main())", *map(str, args)]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("MESU_SNN_DATA", "MESU_SNN_CRASH_AT", "MESU_SNN_CRASH_LOG"):
        env.pop(k, None)
    env.setdefault("MESU_SNN_TRACE_MERGE_EVERY", "4")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_args(cfg: Path, out: Path, resume: bool = False, trace: bool = True) -> list[str]:
    return ["train", str(cfg), "--out", str(out), "--quiet"] + (["--sigma-trace", str(TRACE_EVERY)] if trace else []) \
        + (["--resume"] if resume else [])


def export_args(run: Path, out: Path, force: bool = False) -> list[str]:
    return ["export", str(run), "--bits", "8", "--samples", "2", "--out", str(out / "model.nir")] + \
        (["--force"] if force else [])


def _logged(work: Path, args: list[str], log: Path) -> list[str]:
    log.unlink(missing_ok=True)
    r = subprocess.run(_cmd(*args), cwd=work, env=_env(MESU_SNN_CRASH_LOG=log), capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"reference run {args[0]} failed: {r.stderr}")
    return [line.split("\t", 1)[1] for line in log.read_text().splitlines()]


def reference(work: Path, scenario: str = "trace") -> tuple[Path, list[str]]:
    """Run uninterrupted once, logging every crash point; returns (run dir, point labels).
    ``scenario`` "export": the export of the trace scenario's reference run (made if missing),
    written to ``work/ref_export``."""
    cfg = work / "run.toml"
    cfg.write_text(CONFIG)
    if scenario == "export":
        run = work / "ref"
        if not (run / "checkpoints" / "last.pt").is_file():
            reference(work, "trace")
        out = work / "ref_export"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        return out, _logged(work, export_args(run, out), work / "crash_points_export.log")
    ref = work / ("ref" if scenario == "trace" else "ref_plain")
    shutil.rmtree(ref, ignore_errors=True)
    labels = _logged(work, train_args(cfg, ref, trace=scenario == "trace"), work / f"crash_points_{scenario}.log")
    return ref, labels


def choose_points(labels: list[str], n: int, seed: int = 0) -> list[int]:
    """1-based crash-point indices: all if n >= len(labels), else one of every kind of point
    (label with digits removed) and an even spread over the rest."""
    if n >= len(labels):
        return list(range(1, len(labels) + 1))
    kinds: dict[str, list[int]] = {}
    for i, lab in enumerate(labels, 1):
        kinds.setdefault(re.sub(r"\d+", "#", lab), []).append(i)
    rng = random.Random(seed)
    chosen = {rng.choice(v) for v in kinds.values()}
    rest = [i for i in range(1, len(labels) + 1) if i not in chosen]
    k = max(0, n - len(chosen))
    if k and rest:
        step = len(rest) / k
        chosen |= {rest[int(j * step)] for j in range(k)}
    return sorted(chosen)[:max(n, len(kinds))]


# ----------------------------------------------------------------- checks
def _trace_rows(t: dict) -> dict:
    return {"summary_updates": t["summary_updates"], "tracked_updates": t["tracked_updates"],
            **{f"{n}/{k}": v for n, d in t["layers"].items() for k, v in d.items() if k != "attrs"}}


def check_left_files(run: Path, ref_trace: dict | None) -> list[str]:
    """Problems with the files a killed run left (empty list: all readable and consistent)."""
    import numpy as np

    from mesu_snn.config import load_config
    from mesu_snn.runs import load_checkpoint, read_log, read_metrics, read_trace
    from mesu_snn.runs.trace import ROW_KEYS
    bad = []
    if not run.exists():
        return bad
    for name, reader in (("config.toml", load_config), ("checkpoints/last.pt", load_checkpoint),
                         ("log.csv", read_log), ("metrics.json", read_metrics)):
        p = run / name
        if p.is_file():
            try:
                reader(p)
            except Exception as e:  # noqa: BLE001 - any failure is a finding
                bad.append(f"{name} unreadable: {type(e).__name__}: {e}")
    for p in (run / "sigma_trace.h5", run / "sigma_trace.h5.partial"):
        if not p.exists():
            continue
        if ref_trace is None:
            bad.append(f"{p.name} written by a run without --sigma-trace")
            continue
        if p.is_dir() and not any(p.glob("part_*.h5")):
            continue                                   # killed before the first flush
        try:
            t = read_trace(p)
        except Exception as e:  # noqa: BLE001
            bad.append(f"{p.name} unreadable: {type(e).__name__}: {e}")
            continue
        for key in ("summary_updates", "tracked_updates"):
            u, ru = t[key], ref_trace[key]
            if not np.array_equal(u, ru[:len(u)]):
                bad.append(f"{p.name}: {key} {u.tolist()} is not a prefix of the reference's")
        for n, d in t["layers"].items():
            for k, v in d.items():
                if k == "attrs":
                    continue
                rv = ref_trace["layers"][n][k]
                if not np.array_equal(v, rv[:len(v)] if k in ROW_KEYS else rv):
                    bad.append(f"{p.name}: {n}/{k} differs from the reference")
        for task, snap in t["snapshots"].items():
            for n, v in snap.items():
                if not (np.array_equal(v["mu"], ref_trace["snapshots"][task][n]["mu"])
                        and np.array_equal(v["sigma"], ref_trace["snapshots"][task][n]["sigma"])):
                    bad.append(f"{p.name}: snapshot {task}/{n} differs")
    return bad


def compare_to_reference(run: Path, ref: Path, trace: bool = True) -> list[str]:
    """Problems of a resumed run against the uninterrupted one (empty: bit-identical)."""
    import numpy as np
    import torch

    from mesu_snn.runs import load_checkpoint, read_trace
    bad = []
    a, b = load_checkpoint(ref / "checkpoints/last.pt"), load_checkpoint(run / "checkpoints/last.pt")
    if a["model"].keys() != b["model"].keys():
        bad.append("model keys differ")
    for k in a["model"]:
        if k in b["model"] and not torch.equal(a["model"][k], b["model"][k]):
            bad.append(f"checkpoint {k} differs")
    for name in ("metrics.json", "log.csv", "config.toml"):
        if not (run / name).is_file():
            bad.append(f"{name} missing")
        elif (run / name).read_bytes() != (ref / name).read_bytes():
            bad.append(f"{name} differs")
    if not (run / "timing.json").is_file():
        bad.append("timing.json missing")
    if not trace:
        if (run / "sigma_trace.h5").exists() or (run / "sigma_trace.h5.partial").exists():
            bad.append("a σ trace written by a run without --sigma-trace")
    elif not (run / "sigma_trace.h5").is_file():
        bad.append("sigma_trace.h5 missing")
    else:
        ta, tb = read_trace(ref / "sigma_trace.h5"), read_trace(run / "sigma_trace.h5")
        if tb["attrs"].get("status") != "complete":
            bad.append(f"trace status {tb['attrs'].get('status')!r}")
        if ta["config"] != tb["config"]:
            bad.append("trace config differs")
        ra, rb = _trace_rows(ta), _trace_rows(tb)
        if ra.keys() != rb.keys():
            bad.append("trace datasets differ")
        for k in ra:
            if k in rb and not (ra[k].dtype == rb[k].dtype and np.array_equal(ra[k], rb[k])):
                bad.append(f"trace {k} differs")
        if sorted(ta["snapshots"]) != sorted(tb["snapshots"]) or ta["snapshot_updates"] != tb["snapshot_updates"]:
            bad.append("trace snapshots differ")
        for task in ta["snapshots"]:
            for n, v in ta["snapshots"][task].items():
                w = tb["snapshots"].get(task, {}).get(n)
                if w is None or not (np.array_equal(v["mu"], w["mu"]) and np.array_equal(v["sigma"], w["sigma"])):
                    bad.append(f"trace snapshot {task}/{n} differs")
    left = [str(p.relative_to(run)) for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".partial")]
    if left:
        bad.append(f"left behind: {left}")
    return bad


def _nir_trees(folder: Path) -> dict:
    import h5py

    from mesu_snn.filecheck import h5_digest
    out = {}
    for p in sorted(folder.glob("*.nir")):
        with h5py.File(p, "r") as f:
            out[p.name] = h5_digest(f)
    return out


def check_export(out: Path, ref: Path, complete: bool) -> list[str]:
    """Problems of an export folder against the uninterrupted export (``complete``: every
    file must be there; else only the ones present must be whole and equal)."""
    from mesu_snn.export.nir_export import from_nir
    bad = []
    want = _nir_trees(ref)
    for p in sorted(out.glob("*.nir")):
        try:
            from_nir(p)
            got = _nir_trees(out)[p.name]
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            bad.append(f"{p.name} unreadable: {type(e).__name__}: {e}")
            continue
        if want.get(p.name) != got:
            bad.append(f"{p.name} differs from the uninterrupted export")
    if complete:
        missing = sorted(set(want) - {p.name for p in out.glob("*.nir")})
        if missing:
            bad.append(f"missing after the rerun: {missing}")
        left = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        if left:
            bad.append(f"left behind: {left}")
    return bad


def _killed(args: list[str], work: Path, point: dict, started: Path | None = None) -> int:
    """Run the command ``args`` and SIGKILL it at ``point`` (a crash hook, or a delay counted
    from when ``started`` exists); its return code."""
    if point["kind"] == "hook":
        return subprocess.run(_cmd(*args), cwd=work, env=_env(MESU_SNN_CRASH_AT=point["at"]), capture_output=True,
                              text=True, timeout=600).returncode
    proc = subprocess.Popen(_cmd(*args), cwd=work, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while started is not None and not started.exists() and proc.poll() is None:
        time.sleep(0.002)
    time.sleep(point["delay"])
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)


def _export_point(work: Path, point: dict, res: dict) -> None:
    tag = f"{point['kind']}_{point.get('at', point.get('delay'))}"
    out = work / f"export_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    ref_run, ref_out = work / "ref", work / "ref_export"
    rc = _killed(export_args(ref_run, out), work, point)
    res["killed"] = rc == -signal.SIGKILL
    if rc not in (0, -signal.SIGKILL):
        res["problems"].append(f"killed export exited with {rc}")
    res["problems"] += check_export(out, ref_out, complete=False)
    r = subprocess.run(_cmd(*export_args(ref_run, out, force=True)), cwd=work, env=_env(), capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        res["problems"].append(f"export rerun failed (rc {r.returncode}): {r.stderr.strip()[-500:]}")
    else:
        res["problems"] += check_export(out, ref_out, complete=True)
    if not res["problems"]:
        shutil.rmtree(out, ignore_errors=True)


# ----------------------------------------------------------------- one kill point
def kill_point(work: str, ref: str, point: dict, subprocess_resume: bool = False) -> dict:
    """Kill one run at ``point`` ({"kind": "hook", "at": K} or {"kind": "timer", "delay": s}),
    check what it left, resume it, compare. Returns the point with "ok" and "problems"."""
    work, ref = Path(work), Path(ref)
    scenario = point.get("scenario", "trace")
    trace = scenario == "trace"
    tag = f"{scenario}_{point['kind']}_{point.get('at', point.get('delay'))}"
    run = work / f"run_{tag}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = work / "run.toml"
    res = dict(point, problems=[])
    t0 = time.time()
    try:
        if scenario == "export":
            _export_point(work, point, res)
            res["ok"] = not res["problems"]
            res["seconds"] = round(time.time() - t0, 2)
            return res
        from mesu_snn.runs import read_trace
        ref_trace = read_trace(ref / "sigma_trace.h5") if trace else None
        rc = _killed(train_args(cfg, run, trace=trace), work, point, started=run / "config.toml")
        res["killed"] = rc == -signal.SIGKILL
        if rc not in (0, -signal.SIGKILL):
            res["problems"].append(f"killed run exited with {rc}")
        res["problems"] += check_left_files(run, ref_trace)
        if not run.exists():
            res["note"] = "killed before the run directory existed: nothing to resume, run from scratch"
            args = train_args(cfg, run, trace=trace)
        else:
            args = train_args(cfg, run, resume=True, trace=trace)
        if subprocess_resume:
            r = subprocess.run(_cmd(*args), cwd=work, env=_env(), capture_output=True, text=True, timeout=600)
            rc, err = r.returncode, r.stderr
        else:
            import contextlib
            import io

            from mesu_snn.cli import main
            buf = io.StringIO()
            cwd = os.getcwd()
            os.chdir(work)
            try:
                with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
                    rc = main(args)
            finally:
                os.chdir(cwd)
            err = buf.getvalue()
        if rc != 0:
            res["problems"].append(f"resume failed (rc {rc}): {err.strip()[-500:]}")
        else:
            res["problems"] += compare_to_reference(run, ref, trace=trace)
    except Exception as e:  # noqa: BLE001 - report, never stop the harness
        res["problems"].append(f"harness error: {type(e).__name__}: {e}\n{traceback.format_exc()[-800:]}")
    res["ok"] = not res["problems"]
    res["seconds"] = round(time.time() - t0, 2)
    if res["ok"]:
        shutil.rmtree(run, ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=120, help="crash-hook kill points (all if >= the number of hooks)")
    ap.add_argument("--timer", type=int, default=20, help="kill points at random delays")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/mesu_kill_harness")
    ap.add_argument("--json", help="append one JSON line per kill point to this file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--merge-every", type=int, default=4, help="$MESU_SNN_TRACE_MERGE_EVERY for every run")
    ap.add_argument("--kinds", help="comma-separated label prefixes: kill at the first crash point of each "
                                    "(e.g. mid_write:last.pt,h5_open:part) instead of --points")
    ap.add_argument("--plain-points", type=int, default=0, help="crash-hook kill points of runs without --sigma-trace")
    ap.add_argument("--plain-timer", type=int, default=0, help="random-delay kill points of runs without a trace")
    ap.add_argument("--export-points", type=int, default=0, help="crash-hook kill points of mesu-snn export")
    ap.add_argument("--export-timer", type=int, default=0, help="random-delay kill points of mesu-snn export")
    ap.add_argument("--subprocess-resume", action="store_true", help="resume in a separate process (slower)")
    a = ap.parse_args(argv)
    # merge σ-trace parts every 4 (not 64) so that kills also land inside merges
    os.environ["MESU_SNN_TRACE_MERGE_EVERY"] = str(a.merge_every)
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rng = random.Random(a.seed)
    points, refs = [], {}
    for scenario, n_hooks, n_timer in (("trace", a.points, a.timer), ("plain", a.plain_points, a.plain_timer),
                                       ("export", a.export_points, a.export_timer)):
        if not (n_hooks or n_timer):
            continue
        ref, labels = reference(work, scenario)
        refs[scenario] = ref
        wall = json.loads((ref / "timing.json").read_text())["wall_s"] if scenario != "export" else 1.5
        if a.kinds and scenario == "trace":      # the first point whose label starts with each given prefix
            at = [next(i for i, lab in enumerate(labels, 1) if lab.startswith(k)) for k in a.kinds.split(",")]
        else:
            at = choose_points(labels, n_hooks, a.seed) if n_hooks else []
        points += [{"scenario": scenario, "kind": "hook", "at": k, "label": labels[k - 1]} for k in at]
        points += [{"scenario": scenario, "kind": "timer", "delay": round(rng.uniform(0, 3.0 * wall + 1.0), 3)}
                   for _ in range(n_timer)]
        print(f"{scenario} reference: {len(labels)} crash points, wall {wall:.2f} s", flush=True)
    print(f"{len(points)} kill points", flush=True)
    out = open(a.json, "a") if a.json else None
    n_ok = 0
    with ProcessPoolExecutor(a.workers) as ex:
        futs = [ex.submit(kill_point, str(work), str(refs[p["scenario"]]), p, a.subprocess_resume) for p in points]
        for i, f in enumerate(as_completed(futs), 1):
            r = f.result()
            n_ok += r["ok"]
            print(f"[{i}/{len(points)}] {'PASS' if r['ok'] else 'FAIL'} {r.get('scenario', 'trace')} {r['kind']} "
                  f"{r.get('label', r.get('delay'))} killed={r.get('killed')} {r['seconds']}s "
                  f"{'; '.join(r['problems'])[:600]}", flush=True)
            if out:
                out.write(json.dumps(r) + "\n")
                out.flush()
    by = {}
    for p in points:
        by.setdefault(p["scenario"], 0)
        by[p["scenario"]] += 1
    print(f"kill points run: {len(points)} ({by}), passed: {n_ok}, failed: {len(points) - n_ok} "
          f"({time.time() - t0:.0f} s)", flush=True)
    return 0 if n_ok == len(points) else 1


if __name__ == "__main__":
    sys.exit(main())
