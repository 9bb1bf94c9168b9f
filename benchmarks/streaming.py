"""Streaming benchmark: one training step per sample (batch 1, T = 10, M = 10, MESU), side by side.

    python benchmarks/streaming.py                  # 1 thread (torch.set_num_threads(1))
    python benchmarks/streaming.py --rounds 15 --iters 20 --tag quiet

Rows, for the LIF MLPs 784-50-10 and 784-100-10 (workloads ``stream-50``, ``stream-100``):
``mesu_snn_weights`` / ``mesu_snn_local`` (SpikingMLP(readout="count") + MESU, input layer
estimator "weights" or "local"; ``mesu_snn_local_torch``: "local" without the compiled loops),
``det_snntorch`` and ``det_norse`` (deterministic, Adam),
``bayes_naive_snntorch`` (the hand-written Bayesian loop); for the ANN 784-50-10 (ReLU, no bias):
``ann_mesu_weights`` / ``ann_mesu_local`` / ``ann_mesu_local_torch`` (BayesLinear layers + MESU) and
``ann_det_adam``; ``*_fused`` rows: the same network and MESU stepped by :class:`mesu_snn.rules.StreamingStep`
(forward, hand-written backward and update without an autograd graph, as the trainer runs it;
``x_autograd`` = ms of the row without ``_fused`` / ms of the row);
and ``multistream5_*``: K = 5 independent SpikingMLP 784-50-10 streams, one by one vs stacked
(:class:`mesu_snn.multistream.StackedSpikingMLP`), ms per step of all 5 streams.
Timing as in ``bench.py`` (rows interleaved round by round, median over rounds). Writes
``results/cpu_streaming_<date>[_tag].json`` and ``.md``. Ratios: ``x_det_snntorch`` = ms of the
deterministic snnTorch row of the same workload / ms of the row (the ANN rows: of ``ann_det_adam``),
``x_naive`` the same for the hand-written Bayesian loop, ``x_weights`` for the weights estimator,
``x_torch`` for the same row without the compiled loops (``*_torch`` rows: ``fast_paths(native=False)``,
the pure-PyTorch fast path; :mod:`mesu_snn.kernels.native`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's mesu_snn
import bench  # noqa: E402
import workloads as wl  # noqa: E402

STREAM_50 = wl.Workload("stream-50", 784, 50, 10, 10, 1, 10)
STREAM_100 = wl.Workload("stream-100", 784, 100, 10, 10, 1, 10)
ANN_50 = wl.Workload("ann-50", 784, 50, 10, 1, 1, 10)
STREAMS = 5


def rows(device: str, multistream: bool = True):
    out = []
    for w in (STREAM_50, STREAM_100):
        out += [
            ("mesu_snn_weights", "delayed", w, lambda w=w: wl.mesu_snn_step(w, device)),
            ("mesu_snn_local", "delayed", w, lambda w=w: wl.mesu_snn_step(w, device, estimator="local")),
            ("mesu_snn_local_torch", "delayed", w,
             lambda w=w: wl.mesu_snn_step(w, device, estimator="local", native=False)),
            ("mesu_snn_local_fused", "delayed", w, lambda w=w: wl.mesu_snn_step_fused(w, device, estimator="local")),
            ("det_snntorch", "delayed (snnTorch)", w, lambda w=w: wl.det_snntorch(w, device)),
            ("det_norse", "immediate (Norse)", w, lambda w=w: wl.det_norse(w, device)),
            ("bayes_naive_snntorch", "delayed (snnTorch)", w, lambda w=w: wl.bayes_naive_snntorch(w, device)),
        ]
    out += [
        ("ann_mesu_weights", "ReLU", ANN_50, lambda: wl.mesu_ann_step(ANN_50, device)),
        ("ann_mesu_local", "ReLU", ANN_50, lambda: wl.mesu_ann_step(ANN_50, device, estimator="local")),
        ("ann_mesu_local_torch", "ReLU", ANN_50, lambda: wl.mesu_ann_step(ANN_50, device, estimator="local",
                                                                           native=False)),
        ("ann_mesu_local_fused", "ReLU", ANN_50, lambda: wl.mesu_ann_step_fused(ANN_50, device, estimator="local")),
        ("ann_det_adam", "ReLU", ANN_50, lambda: wl.det_ann_step(ANN_50, device)),
    ]
    if multistream:
        for est in ("weights", "local"):
            out += [
                (f"multistream{STREAMS}_one_by_one_{est}", "delayed", STREAM_50,
                 lambda est=est: wl.multistream_step(STREAM_50, device, STREAMS, stacked=False, estimator=est)),
                (f"multistream{STREAMS}_stacked_{est}", "delayed", STREAM_50,
                 lambda est=est: wl.multistream_step(STREAM_50, device, STREAMS, stacked=True, estimator=est)),
            ]
    return [(f"{w.name}/{name}", lif, w, make) for name, lif, w, make in out]


def add_ratios(results):
    ms_of = {r["name"]: r.get("ms_per_step") for r in results}
    for r in results:
        if r.get("ms_per_step") is None:
            continue
        wname, row = r["name"].split("/", 1)
        det = f"{wname}/ann_det_adam" if row.startswith("ann_") else f"{wname}/det_snntorch"
        refs = {"x_det_snntorch": det, "x_naive": f"{wname}/bayes_naive_snntorch",
                "x_weights": f"{wname}/{row.replace('local', 'weights')}",
                "x_torch": f"{wname}/{row}_torch"}
        if row.endswith("_torch"):
            refs.pop("x_weights")
        if row.endswith("_fused"):          # the hand-written whole step vs the autograd step of the same row
            refs = {"x_det_snntorch": det, "x_naive": refs["x_naive"], "x_autograd": f"{wname}/{row[:-len('_fused')]}"}
        if row.startswith("multistream"):
            r["samples_per_s"] = round(r["samples_per_s"] * STREAMS, 1)   # one update per stream per step
            refs = {"x_one_by_one": f"{wname}/{row.replace('stacked', 'one_by_one')}"}
        for key, ref in refs.items():
            if ms_of.get(ref) and ref != r["name"]:
                r[key] = round(ms_of[ref] / r["ms_per_step"], 2)
    return results


def markdown(meta, results) -> str:
    head = (f"Streaming (batch 1, T = 10, M = 10, MESU), {meta['device_name']}, torch {meta['machine']['torch']}, "
            f"{meta['machine']['threads']} thread(s), {meta['date']}. Median of {meta['rounds']} rounds × "
            f"{meta['iters']} steps; load average (1/5/15 min) {meta.get('loadavg_start')} at start, "
            f"{meta.get('loadavg_end')} at end.\nCommand: `{meta['command']}`\n\n"
            "| workload | row | ms/step (median) | ms/step (min) | updates/s | × det. snnTorch (ANN: det. Adam) "
            "| × hand-written Bayes | × weights estimator | × one by one | × without native loops | × autograd step |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in results:
        wname, row = r["name"].split("/", 1)
        if "error" in r:
            lines.append(f"| {wname} | {row} | error: {r['error'][:80]} | | | | | | | | |")
            continue

        def f(k, fmt="{:.2f}"):
            v = r.get(k)
            return "" if v is None else fmt.format(v)
        lines.append(f"| {wname} | {row} | {f('ms_per_step', '{:.3f}')} | {f('ms_min', '{:.3f}')} | "
                     f"{f('samples_per_s', '{:.0f}')} | {f('x_det_snntorch')} | {f('x_naive')} | "
                     f"{f('x_weights')} | {f('x_one_by_one')} | {f('x_torch')} | {f('x_autograd')} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated substrings: keep matching rows")
    ap.add_argument("--no-multistream", action="store_true")
    ap.add_argument("--out-dir", default=str(bench.RESULTS))
    ap.add_argument("--tag", default="")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rs = rows(args.device, not args.no_multistream)
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        rs = [r for r in rs if any(k in r[0] for k in keys)]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    info = bench.machine()
    meta = dict(workload="streaming", device=args.device, machine=info, date=date, rounds=args.rounds,
                iters=args.iters, device_name=info.get("gpu") if args.device.startswith("cuda") else f"CPU {info['cpu']}",
                command=" ".join(["streaming.py"] + (argv if argv is not None else sys.argv[1:])))
    print(json.dumps(meta), flush=True)
    meta["loadavg_start"] = bench._loadavg()
    results = add_ratios(bench.measure(rs, args.device, args.rounds, args.iters, args.warmup,
                                       log=lambda *a, **k: print(*a, **k, flush=True)))
    meta["loadavg_end"] = bench._loadavg()
    stem = f"{'cuda' if args.device.startswith('cuda') else 'cpu'}_streaming_{date}{('_' + args.tag) if args.tag else ''}"
    out = Path(args.out_dir)
    bench._write(out / f"{stem}.json", json.dumps(dict(meta=meta, results=results), indent=1) + "\n", args.force)
    md = markdown(meta, results)
    bench._write(out / f"{stem}.md", md, args.force)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
