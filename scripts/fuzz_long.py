"""The long fuzz run of every reader: ``tests/test_fuzz_readers.py`` with every case count
multiplied by ``--scale`` (``MESU_SNN_FUZZ_SCALE``), outside CI.

Usage::

    python scripts/fuzz_long.py --scale 10 [--out benchmarks/results/fuzz_long.txt]

Prints (and with ``--out`` writes) pytest's summary and the number of cases per reader. The
cases are deterministic for a given scale (hypothesis ``derandomize``), so a scale that was run
once need not be run again; a larger one explores further.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=10, help="multiply every test's case count by this")
    ap.add_argument("--out", help="write the summary to this file")
    ap.add_argument("-k", default=None, help="only the tests matching this pytest -k expression")
    a = ap.parse_args(argv)
    env = dict(os.environ, MESU_SNN_FUZZ_SCALE=str(a.scale))
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_fuzz_readers.py"]
    if a.k:
        cmd += ["-k", a.k]
    t0 = time.time()
    log = Path(a.out + ".log") if a.out else REPO / ".fuzz_long.log"
    with open(log, "w") as f:             # pytest's output as it goes (survives a kill)
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    text = log.read_text()
    counts = re.findall(r"fuzz cases per reader: .*", text)
    tail = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    failures = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "E   Falsifying", "E   "))][:40]
    summary = "\n".join([f"python scripts/fuzz_long.py --scale {a.scale}" + (f" -k {a.k!r}" if a.k else ""),
                         f"wall {wall:.0f} s, pytest rc {r.returncode}", *counts, *tail, *failures]) + "\n"
    print(summary, end="")
    if a.out:
        Path(a.out).write_text(summary)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
