"""Side-by-side training-step benchmark: mesu_snn vs snnTorch, Norse, the hand-written Bayesian
snnTorch loop and the anchors' batched sketch, on one workload, in one process.

    python benchmarks/bench.py                 # CPU: small W (784-128-10, T=10, B=32, M=4)
    python benchmarks/bench.py --device cuda   # GPU: W (784-512-10, T=25, B=256, M=8) + streaming

Rows are timed round-robin (``--rounds`` rounds of ``--iters`` steps each, after warm-up) and
the median over rounds is reported, so load drift on a shared machine hits every row alike.
Outputs ``benchmarks/results/<device>_<workload>_<date>.json`` and ``.md`` (refuses to
overwrite without ``--force``). Columns: ms per step, samples/s, peak CUDA memory (GPU),
MiB saved by autograd for backward (all devices), and ratios to the reference rows.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def rows_for(device: str, w: wl.Workload, stream: wl.Workload | None, compile_: bool):
    """(name, lif semantics, workload, factory) for every row of this run."""
    cuda = device.startswith("cuda")
    rows = [
        ("det_snntorch", "delayed (snnTorch)", w, lambda: wl.det_snntorch(w, device)),
        ("det_norse", "immediate (Norse)", w, lambda: wl.det_norse(w, device)),
        ("bayes_naive_snntorch", "delayed (snnTorch)", w, lambda: wl.bayes_naive_snntorch(w, device)),
        ("bayes_batched_eager", "immediate (sketch)", w, lambda: wl.bayes_batched(w, device)),
        ("mesu_snn_reference", "delayed", w, lambda: wl.mesu_snn_step(w, device, fused=False)),
        ("mesu_snn_delayed", "delayed", w, lambda: wl.mesu_snn_step(w, device)),
        ("mesu_snn_immediate", "immediate", w, lambda: wl.mesu_snn_step(w, device, reset_delay=False)),
    ]
    if not cuda:      # the whole step without autograd (StreamingStep, what the trainer runs; CPU only),
        rows += [     # at the library's default estimator ("weights") and with "local"
            ("mesu_snn_whole_step", "delayed", w, lambda: wl.mesu_snn_step_fused(w, device, estimator="weights")),
            ("mesu_snn_whole_step_local", "delayed", w, lambda: wl.mesu_snn_step_fused(w, device, estimator="local")),
        ]
    if compile_:
        rows += [
            ("bayes_batched_compile", "immediate (sketch)", w, lambda: wl.bayes_batched(w, device, True)),
            ("mesu_snn_compile", "delayed", w, lambda: wl.mesu_snn_step(w, device, compile_=True)),
        ]
    if cuda:
        rows += [
            ("bayes_batched_cudagraph_bf16", "immediate (sketch)", w,
             lambda: wl.bayes_batched(w, device, True, "reduce-overhead", True)),
            ("mesu_snn_cudagraph", "delayed", w,
             lambda: wl.mesu_snn_step(w, device, compile_=True, mode="reduce-overhead")),
            ("mesu_snn_graphed", "delayed", w, lambda: wl.mesu_snn_graphed(w, device)),
            ("mesu_snn_graphed_compiled", "delayed", w, lambda: wl.mesu_snn_graphed(w, device, True)),
        ]
    if stream is not None:
        rows += [
            ("stream1_naive_snntorch", "delayed (snnTorch)", stream, lambda: wl.bayes_naive_snntorch(stream, device)),
            ("stream1_mesu_snn", "delayed", stream, lambda: wl.mesu_snn_step(stream, device)),
        ]
        if cuda:
            rows += [
                ("stream1_batched_cudagraph", "immediate (sketch)", stream,
                 lambda: wl.bayes_batched(stream, device, True, "reduce-overhead")),
                ("stream1_mesu_snn_cudagraph", "delayed", stream,
                 lambda: wl.mesu_snn_step(stream, device, compile_=True, mode="reduce-overhead")),
                ("stream1_mesu_snn_graphed", "delayed", stream, lambda: wl.mesu_snn_graphed(stream, device)),
                ("stream1_mesu_snn_graphed_compiled", "delayed", stream,
                 lambda: wl.mesu_snn_graphed(stream, device, True)),
            ]
    return rows


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def saved_mib(forward_backward) -> float:
    """MiB of distinct tensors autograd saves for backward during one forward."""
    seen = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            seen[key] = t.numel() * t.element_size()
        except (RuntimeError, NotImplementedError):
            pass
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward_backward()
    return sum(seen.values()) / 2 ** 20


def measure(rows, device, rounds: int, iters: int, warmup: int, log=print):
    """Build, warm up and time every row; rows are interleaved round by round."""
    built = {}
    results = {}
    for name, lif, w, make in rows:
        t0 = time.perf_counter()
        try:
            step, fb = make()
            for _ in range(warmup):
                step()
            _sync(device)
            mem = None
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step()
                _sync(device)
                mem = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            saved = None if any(k in name for k in ("cudagraph", "compile", "graphed")) else saved_mib(fb)
            built[name] = step
            results[name] = dict(name=name, lif=lif, workload=w.name, T=w.T, B=w.B, M=w.M if "det_" not in name else 1,
                                 hidden=w.hidden, times_ms=[], peak_mib=mem, saved_mib=saved,
                                 setup_s=round(time.perf_counter() - t0, 2))
        except Exception as e:  # one broken row must not lose the others
            results[name] = dict(name=name, lif=lif, workload=w.name, error=f"{type(e).__name__}: {e}"[:300])
            traceback.print_exc()
        log(f"# built {name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    for r in range(rounds):
        for name, step in built.items():
            try:
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(iters):
                    step()
                _sync(device)
                results[name]["times_ms"].append((time.perf_counter() - t0) / iters * 1e3)
            except Exception as e:
                results[name]["error"] = f"{type(e).__name__}: {e}"[:300]
        log(f"# round {r + 1}/{rounds} done", file=sys.stderr)
    out = []
    for name, _, w, _ in rows:
        res = results[name]
        ts = res.pop("times_ms", [])
        if ts and "error" not in res:
            med = statistics.median(ts)
            res.update(ms_per_step=round(med, 3), ms_min=round(min(ts), 3), samples_per_s=round(w.B / med * 1e3, 1))
        out.append(res)
    return out


def add_ratios(results):
    """speedup_vs_X = ms(X) / ms(row) on medians, for the reference rows X present."""
    ms_of = {r["name"]: r.get("ms_per_step") for r in results}
    refs = {"naive": "bayes_naive_snntorch", "snntorch": "det_snntorch", "sketch": "bayes_batched_eager",
            "stream_naive": "stream1_naive_snntorch"}
    for r in results:
        if r.get("ms_per_step") is None:
            continue
        for key, ref in refs.items():
            same_stream = r["name"].startswith("stream1") == ref.startswith("stream1")
            if ms_of.get(ref) and same_stream:
                r[f"speedup_vs_{key}"] = round(ms_of[ref] / r["ms_per_step"], 2)
    return results


def machine() -> dict:
    info = dict(torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
                threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
                env={k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
                     if k in os.environ})
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def markdown(meta, results) -> str:
    head = (f"Workload {meta['workload']} ({meta['sizes']}), device {meta['device_name']}, torch {meta['machine']['torch']}, "
            f"{meta['machine']['threads']} threads{' ' + str(meta['machine']['env']) if meta['machine'].get('env') else ''}, {meta['date']}. Median of {meta['rounds']} rounds × {meta['iters']} steps; "
            f"load average (1/5/15 min) {meta.get('loadavg_start')} at start, {meta.get('loadavg_end')} at end.\n"
            f"Command: `{meta['command']}`\n\n"
            "| row | LIF reset | B | M | ms/step (median) | ms/step (min) | samples/s | saved MiB | peak MiB | × naive Bayes | × snnTorch | × sketch |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['lif']} | | | error: {r['error'][:60]} | | | | | | | |")
            continue

        def f(k, fmt="{:.2f}"):
            v = r.get(k)
            return "" if v is None else fmt.format(v)
        naive = f("speedup_vs_stream_naive") if r["name"].startswith("stream1") else f("speedup_vs_naive")
        lines.append(f"| {r['name']} | {r['lif']} | {r['B']} | {r['M']} | {f('ms_per_step', '{:.3f}')} | {f('ms_min', '{:.3f}')} | "
                     f"{f('samples_per_s', '{:.0f}')} | {f('saved_mib', '{:.1f}')} | {f('peak_mib', '{:.1f}')} | "
                     f"{naive} | {f('speedup_vs_snntorch')} | {f('speedup_vs_sketch')} |")
    return head + "\n".join(lines) + "\n"


def _write(path: Path, text: str, force: bool):
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    ap.add_argument("--workload", choices=["small", "full", "tiny"], default=None,
                    help="small: CPU W-small (default on CPU); full: W (default on CUDA); tiny: smoke test")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows (on by default on CUDA)")
    ap.add_argument("--no-stream", action="store_true", help="skip the batch-1 streaming rows")
    ap.add_argument("--only", default="", help="comma-separated substrings: keep matching rows")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--force", action="store_true", help="overwrite existing result files")
    args = ap.parse_args(argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("bench: --device cuda but torch.cuda.is_available() is False")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.workload or ("full" if device.startswith("cuda") else "small")
    w = {"small": wl.W_SMALL, "full": wl.W_FULL,
         "tiny": wl.Workload("tiny", 64, 32, 10, 4, 8, 2)}[size]
    cuda = device.startswith("cuda")
    rounds = args.rounds or (7 if cuda else 5)
    iters = args.iters or (20 if cuda else 5)
    stream = None if args.no_stream else wl.with_batch(w, 1)
    rows = rows_for(device, w, stream, args.compile or cuda)
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        rows = [r for r in rows if any(k in r[0] for k in keys)]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    info = machine()
    meta = dict(workload=w.name, sizes=f"{w.n_in}-{w.hidden}-{w.n_out}, T={w.T}, B={w.B}, M={w.M}", device=device,
                device_name=info.get("gpu") if cuda else f"CPU {info['cpu']}", machine=info, date=date,
                rounds=rounds, iters=iters, command=" ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])))
    print(json.dumps(meta), flush=True)
    meta["loadavg_start"] = _loadavg()
    results = add_ratios(measure(rows, device, rounds, iters, args.warmup,
                                 log=lambda *a, **k: print(*a, **k, flush=True)))
    meta["loadavg_end"] = _loadavg()
    for r in results:
        print(json.dumps(r), flush=True)
    stem = f"{'cuda' if cuda else 'cpu'}_{w.name}_{date}{('_' + args.tag) if args.tag else ''}"
    out = Path(args.out_dir)
    _write(out / f"{stem}.json", json.dumps(dict(meta=meta, results=results), indent=1) + "\n", args.force)
    md = markdown(meta, results)
    _write(out / f"{stem}.md", md, args.force)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
