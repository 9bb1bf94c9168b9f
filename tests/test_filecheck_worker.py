"""The HDF5 reading worker (mesu_snn.filecheck.read_h5_isolated, probe_h5): a file on which libhdf5 loops forever is a
FileFormatError naming the file after the timeout, the worker is replaced, nothing is left in
the temporary folder, and the worker imports no torch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest_data import write_shd

import mesu_snn.filecheck as hs
from mesu_snn.datasets import load_shd, read_shd_file
from mesu_snn.errors import FileFormatError

HANG = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "fuzz_hang_shd.h5"
SPEC = {"spikes/times": "vlen", "spikes/units": "vlen", "labels": "array"}


@pytest.fixture
def tmpdir_watch(tmp_path, monkeypatch):
    """Temporary folders of the reader go to a folder of our own, checked empty afterwards."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp
    assert list(tmp.iterdir()) == [], "the reader left temporary files"


def _good(path: Path) -> Path:
    write_shd(path, [[0.1, 0.2], [], [0.5]], [[3, 699], [], [0]], [1, 19, 0])
    return path


def test_a_file_that_hangs_libhdf5_is_a_clear_error_within_the_timeout(tmp_path, tmpdir_watch):
    assert HANG.is_file()
    t0 = time.monotonic()
    with pytest.raises(FileFormatError, match=r"fuzz_hang_shd\.h5: reading the SHD file stalled: no result after "
                                              r"2 s.*MESU_SNN_H5_TIMEOUT"):
        read_shd_file(HANG, timeout=2)
    took = time.monotonic() - t0
    assert took < 60, took            # bounded (the worker's start is not counted in the 2 s)
    assert hs._PROC is None           # the stuck worker was killed
    # the next read gets a fresh worker and a good SHD-layout file still loads
    events, labels = read_shd_file(_good(tmp_path / "good.h5"), timeout=30)
    assert labels.tolist() == [1, 19, 0] and [len(e) for e in events] == [2, 0, 1]
    assert events[0]["x"].tolist() == [3, 699] and events[0]["t"].tolist() == [
        int(np.float64(np.float16(0.1)) * 1e6), int(np.float64(np.float16(0.2)) * 1e6)]


def test_load_shd_reads_the_timeout_from_the_environment(tmp_path, monkeypatch, tmpdir_watch):
    (tmp_path / "SHD").mkdir()
    (tmp_path / "SHD" / "shd_test.h5").write_bytes(HANG.read_bytes())
    monkeypatch.setenv(hs.TIMEOUT_ENV, "1.5")
    with pytest.raises(FileFormatError, match=r"shd_test\.h5: reading the SHD file stalled: no result after 1.5 s"):
        load_shd(tmp_path, "test")
    monkeypatch.setenv(hs.TIMEOUT_ENV, "soon")
    with pytest.raises(FileFormatError, match="MESU_SNN_H5_TIMEOUT='soon' is not a number"):
        load_shd(tmp_path, "test")
    monkeypatch.delenv(hs.TIMEOUT_ENV)
    assert hs.default_timeout(HANG) == pytest.approx(60 + HANG.stat().st_size / 10e6)


def test_the_worker_is_reused_and_a_dead_worker_is_a_clear_error(tmp_path, tmpdir_watch):
    good = _good(tmp_path / "good.h5")
    read_shd_file(good)
    first = hs._PROC.pid
    read_shd_file(good)
    assert hs._PROC.pid == first      # one start per process, not per file
    # a worker killed while reading (as a crash inside libhdf5 would) -> FileFormatError naming the file
    killer = threading.Timer(1.0, lambda: os.kill(first, signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(FileFormatError, match=r"fuzz_hang_shd\.h5: the SHD reader process died .*exit status -9"):
            read_shd_file(HANG, timeout=60)
    finally:
        killer.cancel()
    assert read_shd_file(good)[1].tolist() == [1, 19, 0]


def test_results_errors_and_layout_of_read_h5_isolated(tmp_path, tmpdir_watch):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        v = f.create_dataset("v", (3,), dtype=h5py.vlen_dtype(np.dtype("float32")))
        v[0], v[1], v[2] = np.array([1, 2], np.float32), np.zeros(0, np.float32), np.array([3], np.float32)
        f["a"] = np.arange(6).reshape(2, 3)
        f["s"] = np.array([b"x", b"yz"], dtype=h5py.string_dtype())
    got = hs.read_h5_isolated(p, {"v": "vlen", "a": "array"}, "test")
    values, offsets = got["v"]
    assert values.tolist() == [1, 2, 3] and values.dtype == np.float32 and offsets.tolist() == [0, 2, 2, 3]
    assert got["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    for spec, msg in (({"nope": "array"}, "missing dataset 'nope'"),
                      ({"a": "vlen"}, "'a' is int64 of shape \\(2, 3\\), expected a 1-d variable-length"),
                      ({"s": "array"}, "'s' is object, expected plain numbers"),
                      ({"s": "vlen"}, "'s' holds variable-length str, expected numbers")):
        with pytest.raises(FileFormatError, match=r"x\.h5: " + msg):
            hs.read_h5_isolated(p, spec, "test")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(FileFormatError, match=r"junk\.h5: not a readable HDF5 file \(expected SHD"):
        hs.read_h5_isolated(tmp_path / "junk.h5", SPEC, "SHD")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        hs.read_h5_isolated(tmp_path / "missing.h5", SPEC, "SHD")


def test_the_worker_imports_neither_torch_nor_the_package_init():
    boot = hs._BOOT.replace("_serve()\n", "print(sorted(m for m in sys.modules if m.startswith(('torch', 'mesu_snn'))))\n")
    out = subprocess.run([sys.executable, "-I", "-c", boot, str(Path(hs.__file__).parent)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "['mesu_snn', 'mesu_snn.errors', 'mesu_snn.filecheck']", out


def test_open_h5_has_the_worker_read_the_file_first_so_a_nir_graph_cannot_hang_us(tmp_path, monkeypatch):
    """NIR (like σ-trace and netx) files keep their strings in the global heap: zeroing bytes of
    its header makes libhdf5 loop forever (scripts/h5_heap_fuzz.py). open_h5's probe turns it
    into a FileFormatError naming the file; the good file still loads."""
    import torch

    import mesu_snn as ms
    from mesu_snn.export.nir_export import from_nir, to_nir
    torch.manual_seed(1)
    net = ms.SpikingMLP([5, 4, 3], reset="zero")
    for lif in net.neurons:
        lif.reset_delay = False
    good = to_nir(net, tmp_path / "good.nir")
    data = good.read_bytes()
    heap = data.find(b"GCOL")
    assert heap > 0
    bad = tmp_path / "bad.nir"
    bad.write_bytes(data[:heap + 12] + b"\0" * 35 + data[heap + 47:])
    monkeypatch.setenv(hs.TIMEOUT_ENV, "2")
    t0 = time.monotonic()
    with pytest.raises(FileFormatError, match=r"bad\.nir: reading the NIR file stalled: no result after 2 s"):
        from_nir(bad)
    assert time.monotonic() - t0 < 60
    back = from_nir(good)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), net.state_dict().values()))
