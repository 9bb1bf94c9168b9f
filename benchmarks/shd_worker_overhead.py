"""SHD read: the old in-process reader (h5py in our process) against the worker, same file, one run."""
import sys, time
from pathlib import Path
import numpy as np, h5py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest_data import write_shd
import tempfile
p = Path(tempfile.gettempdir()) / "mesu_snn_bench_shd.h5"
rng = np.random.default_rng(0)
n, k = 2000, 4000
if not p.exists():
    times = [np.sort(rng.uniform(0, 1, k)) for _ in range(n)]
    units = [rng.integers(0, 700, k) for _ in range(n)]
    write_shd(p, times, units, rng.integers(0, 20, n).tolist())
from mesu_snn.datasets.shd import read_shd_file
def old():
    with h5py.File(p, "r") as f:
        t = f["spikes/times"][()]; u = f["spikes/units"][()]; l = f["labels"][()]
    return t, u, l
def new():
    from mesu_snn.filecheck import read_h5_isolated
    return read_h5_isolated(p, {"spikes/times": "vlen", "spikes/units": "vlen", "labels": "array"}, "SHD")
new()   # start the worker
for name, fn in (("old h5py in process", old), ("worker", new), ("old h5py in process", old), ("worker", new),
                 ("read_shd_file (worker + checks)", lambda: read_shd_file(p))):
    t = time.perf_counter(); fn(); print(f"{name}: {time.perf_counter() - t:.3f} s")
print(f"file {p.stat().st_size / 1e6:.1f} MB, {n} samples x {k} spikes")
