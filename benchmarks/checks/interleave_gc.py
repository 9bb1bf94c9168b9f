"""Is the slower interleaved timing of the streaming rows Python's garbage collector? (a one-off check)

    python benchmarks/checks/interleave_gc.py alone              # the 784-50-10 whole step and snnTorch only
    python benchmarks/checks/interleave_gc.py built              # every streaming row built, only those two timed
    python benchmarks/checks/interleave_gc.py interleave         # every row timed, round by round (as streaming.py)
    python benchmarks/checks/interleave_gc.py interleave_nogc    # the same with gc.disable()
    python benchmarks/checks/interleave_gc.py interleave_freeze  # the same after gc.collect(); gc.freeze()

Prints the median ms per step over 7 rounds x 20 steps of the rows it reports. Results: benchmarks/README.md.
"""
from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import streaming  # noqa: E402

MODES = ("alone", "built", "interleave", "interleave_nogc", "interleave_freeze")
TIMED = ("stream-50/mesu_snn_local_fused", "stream-50/det_snntorch")
REPORTED = TIMED + ("stream-100/mesu_snn_local_fused", "ann-50/ann_mesu_local_fused")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in MODES:
        raise SystemExit(f"usage: interleave_gc.py MODE with MODE one of {', '.join(MODES)}")
    mode = argv[0]
    torch.set_num_threads(1)
    built = {}
    for name, _, _, make in streaming.rows("cpu", multistream=True):
        if mode == "alone" and name not in TIMED:
            continue
        step, _ = make()
        for _ in range(5):
            step()
        built[name] = step
    if mode == "interleave_freeze":
        gc.collect()
        gc.freeze()
    if mode == "interleave_nogc":
        gc.disable()
    times = {n: [] for n in built}
    for _ in range(7):
        for n, step in built.items():
            if not mode.startswith("interleave") and n not in TIMED:
                continue
            t0 = time.perf_counter()
            for _ in range(20):
                step()
            times[n].append((time.perf_counter() - t0) / 20 * 1e3)
    print(mode, "objects tracked by gc:", len(gc.get_objects()),
          {n: round(statistics.median(v), 3) for n, v in times.items() if v and n in REPORTED})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
