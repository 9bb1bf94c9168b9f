"""Fuzzed readers: every file format mesu_snn reads, fed mutated copies of valid files.

Readers: NIR (``from_nir``), σ trace (``read_trace`` of a finished file and of a ``.partial``
folder of parts), checkpoint (``load_checkpoint``, ``load_run_model``), config
(``load_config``), N-MNIST ``.bs2`` (``read_nmnist_file``), MNIST idx (``read_idx`` and
``load_mnist`` with its known checksums), SHD (``read_shd_file``).

Mutations: truncation, flipped bits, overwritten / inserted / zeroed bytes (byte level), and
per format crafted files (made to pass the checksum where the format has one, as an attacker
would): wrong dtypes and shapes, huge declared sizes (an idx header declaring 2³⁶ items, HDF5
datasets declared huge), timestamps going backwards, out-of-range addresses, non-finite values.

Every case must end either in a :class:`~mesu_snn.errors.MesuError` whose message names the
file, or in a successful read; a byte-level mutation of a file with a checksum (trace, NIR,
checkpoint, the standard MNIST files) must never read as different data; a successful read
of a format without one (N-MNIST, SHD, a custom idx, a config) must still satisfy the
format's invariants. Any other exception, a case running longer than :data:`CASE_SECONDS`,
or a Python/numpy allocation above the bound of :mod:`mesu_snn.filecheck` (1032 × the file's
size + slack, traced with ``tracemalloc``; the SHD reader's HDF5 reads run in a worker process,
mesu_snn.filecheck.read_h5_isolated, which applies the same bound before it reads) fails. Deterministic (``derandomize``); the CI run
is about 2,600 cases (sum of the ``@fuzz`` counts; the slower HDF5 readers get fewer). ``MESU_SNN_FUZZ_SCALE=K`` multiplies every count (the long run:
``scripts/fuzz_long.py``).
"""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest_data import shared_data_dir
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import mesu_snn as ms
from mesu_snn.config import RunConfig, dump_toml, load_config
from mesu_snn.datasets import mnist as mnist_mod
from mesu_snn.datasets import read_idx, read_nmnist_file, read_shd_file
from mesu_snn.errors import MesuError
from mesu_snn.export.nir_export import from_nir, to_nir
from mesu_snn.filecheck import DIGEST_ATTR, MAX_EXPANSION, stamp_h5_digest
from mesu_snn.models import model_spec
from mesu_snn.runs.checkpoint import load_checkpoint, save_checkpoint
from mesu_snn.runs.layout import load_run_model
from mesu_snn.runs.recorder import SigmaRecorder
from mesu_snn.runs.trace import read_trace

SCALE = max(1, int(os.environ.get("MESU_SNN_FUZZ_SCALE", "1") or 1))
CASE_SECONDS = 20
#: allocations traced above this (plus MAX_EXPANSION × the file's size) fail a case
SLACK_BYTES = 48 << 20
COUNTS: dict[str, int] = {}


def fuzz(n: int):
    return settings(max_examples=n * SCALE, derandomize=True, deadline=None, database=None, print_blob=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ------------------------------------------------------------------ mutations and the verdict
BYTE_MUTATION = st.tuples(st.sampled_from(["truncate", "flip", "overwrite", "insert", "zero", "append"]),
                          st.floats(0, 1, allow_nan=False), st.integers(1, 4096), st.binary(min_size=1, max_size=64))


def mutate(data: bytes, m) -> bytes:
    kind, where, n, blob = m
    i = min(int(where * len(data)), max(len(data) - 1, 0))
    if kind == "truncate":
        return data[:i]
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (1 << (n % 8))]) + data[i + 1:]
    if kind == "overwrite":
        return data[:i] + blob + data[i + len(blob):]
    if kind == "insert":
        return data[:i] + blob + data[i:]
    if kind == "zero":
        return data[:i] + b"\0" * min(n, 64) + data[i + min(n, 64):]
    return data + blob


class CaseTimeout(Exception):
    pass


@contextmanager
def watched(path, traced: bool):
    """Fail on a hang (SIGALRM after CASE_SECONDS) or, when ``traced``, a Python/numpy
    allocation above the bound (tracemalloc triples a read's time, so every
    :data:`TRACE_EVERY`-th case and every crafted huge declaration is traced)."""
    def alarm(*_):
        raise CaseTimeout(f"reading {path} took more than {CASE_SECONDS} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_SECONDS)
    p = Path(path)
    size = p.stat().st_size if p.is_file() else sum(q.stat().st_size for q in p.iterdir() if q.is_file())
    if traced:
        tracemalloc.start()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            bound = MAX_EXPANSION * size + SLACK_BYTES
            assert peak <= bound, f"reading {path} ({size} bytes) allocated {peak} bytes, above the bound {bound}"


#: seconds an HDF5 read in the SHD reader's worker may take (mesu_snn.filecheck), under CASE_SECONDS
H5_TIMEOUT_S = 5


@pytest.fixture(scope="module", autouse=True)
def _report():
    old = os.environ.get("MESU_SNN_H5_TIMEOUT")
    os.environ["MESU_SNN_H5_TIMEOUT"] = str(H5_TIMEOUT_S)
    yield
    if old is None:
        os.environ.pop("MESU_SNN_H5_TIMEOUT", None)
    else:
        os.environ["MESU_SNN_H5_TIMEOUT"] = old
    print(f"\nfuzz cases per reader: {COUNTS} (total {sum(COUNTS.values())})")


#: every TRACE_EVERY-th case runs under tracemalloc
TRACE_EVERY = 8


def verdict(reader: str, read, path, names=None, traced: bool = False):
    """Run ``read(path)``: ("error", exc) for a MesuError naming the file (or one of ``names``),
    ("ok", result) on success; anything else fails the test."""
    COUNTS[reader] = COUNTS.get(reader, 0) + 1
    names = names or [Path(path).name]
    traced = traced or sum(COUNTS.values()) % TRACE_EVERY == 0
    try:
        with watched(path, traced):
            out = read(path)
    except MesuError as e:
        assert any(n in str(e) for n in names), f"{reader}: error does not name the file {names}: {e!r}"
        return "error", e
    return "ok", out


_REFS: dict = {}


def ref(key, make):
    """A reader's result on the unmutated file, computed once."""
    if key not in _REFS:
        _REFS[key] = make()
    return _REFS[key]


def same(a, b) -> bool:
    """Deep equality of what readers return (dicts, lists, arrays, tensors, scalars)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and bool(
            torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.nan_to_num(7.25), b.nan_to_num(7.25))))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and (
            np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    return type(a) is type(b) and a == b


def model_state(m) -> dict:
    return {"class": type(m).__name__, "spec": model_spec(m), "state": m.state_dict()}


# ------------------------------------------------------------------ valid files to start from
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _recorded(folder: Path, finish: bool) -> Path:
    torch.manual_seed(0)
    net = ms.SpikingMLP([6, 5, 3])
    opt = ms.MESU(net, memory=50, sigma_prior=0.1)
    path = folder / "sigma_trace.h5"
    rec = SigmaRecorder(path, every=2, n_tracked=3, seed=0)
    rec.on_start(net, opt, {"rule": "mesu"})
    for u in range(1, 7):
        loss = ms.nll_loss(net(torch.rand(4, 3, 6), samples=2), torch.randint(0, 3, (3,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.on_update(u, net, opt)
        if u % 2 == 0:
            rec.flush()
        if u == 3:
            rec.on_task_end(0, net, opt)
    if finish:
        rec.on_end(net, opt)
        return path
    rec.flush()
    rec.close()
    return folder / "sigma_trace.h5.partial"


@pytest.fixture(scope="module")
def trace_file(work) -> Path:
    (work / "trace_src").mkdir()
    return _recorded(work / "trace_src", finish=True)


@pytest.fixture(scope="module")
def trace_partial(work) -> Path:
    (work / "partial_src").mkdir()
    p = _recorded(work / "partial_src", finish=False)
    assert p.is_dir() and len(list(p.glob("part_*.h5"))) >= 3
    return p


@pytest.fixture(scope="module")
def nir_file(work) -> Path:
    torch.manual_seed(1)
    net = ms.SpikingMLP([5, 4, 3], reset="zero")
    for lif in net.neurons:
        lif.reset_delay = False
    return to_nir(net, work / "src.nir")


@pytest.fixture(scope="module")
def netx_file(work) -> Path:
    torch.manual_seed(2)
    net = ms.SpikingMLP([5, 4, 3], reset="zero", readout="count")
    for lif in net.neurons:
        lif.reset_delay = False
    return ms.to_netx(net, work / "src.net", realisations=1)


def _netx_state(p):
    from mesu_snn.export.netx import read_netx
    return [(L.kind, L.weight.tolist(), None if L.bias is None else L.bias.tolist(), L.v_decay, L.v_th, L.scale)
            for L in read_netx(p)]


def _payload():
    torch.manual_seed(2)
    net = ms.SpikingMLP([5, 4, 3])
    return {"model": net.state_dict(), "model_spec": model_spec(net), "position": 7,
            "state": {"history": [0.5, 0.25], "rows": [[1.0, float("nan")]]}, "rng": {"seed": 3}}


@pytest.fixture(scope="module")
def checkpoint_file(work) -> Path:
    return save_checkpoint(work / "src_run" / "checkpoints" / "last.pt", _payload())


def _events(n=300, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 34, n), rng.integers(0, 34, n)
    t, p = np.sort(rng.integers(0, 300_000, n)), rng.integers(0, 2, n)
    raw = np.zeros((n, 5), np.uint8)
    raw[:, 0], raw[:, 1], raw[:, 2] = x, y, (p << 7) | ((t >> 16) & 127)
    raw[:, 3], raw[:, 4] = (t >> 8) & 255, t & 255
    return raw.tobytes()


def _nmnist_source() -> bytes:
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "NMNIST-small" / "train" / "1.bs2"
    env = os.environ.get("MESU_SNN_DATA", "").strip()
    if env:
        real = Path(env) / "NMNIST-small" / "train" / "1.bs2"
    return real.read_bytes() if real.is_file() else _events()


def idx(arr: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + \
        arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_shd(path: Path, times, units, labels, times_dtype=np.float16) -> None:
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.dtype(times_dtype)))
        u = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.dtype("uint16")))
        for i, (tt, uu) in enumerate(zip(times, units)):
            t[i] = np.asarray(tt, times_dtype)
            u[i] = np.asarray(uu, np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, np.uint8))


def _shd_sample(rng, n):
    return np.sort(rng.uniform(0, 1, n)), rng.integers(0, 700, n)


@pytest.fixture(scope="module")
def shd_file(work) -> Path:
    rng = np.random.default_rng(0)
    samples = [_shd_sample(rng, int(rng.integers(0, 40))) for _ in range(5)]
    path = work / "src_shd.h5"
    _write_shd(path, [s[0] for s in samples], [s[1] for s in samples], [3, 0, 19, 7, 7])
    return path


# ------------------------------------------------------------------ byte-level fuzz per reader
def _bytes_case(reader, read, src: Path, dst: Path, m, expected=None, check=None):
    data = src.read_bytes()
    dst.write_bytes(mutate(data, m))
    kind, out = verdict(reader, read, dst)
    if kind == "ok":
        if expected is not None:
            assert same(expected, out), f"{reader}: mutation {m[:3]} loaded as different data, silently"
        if check is not None:
            check(out)
    return kind


@fuzz(40)
@given(m=BYTE_MUTATION)
def test_nir_bytes(work, nir_file, m):
    r = ref("nir", lambda: model_state(from_nir(nir_file)))
    _bytes_case("nir", lambda p: model_state(from_nir(p)), nir_file, work / "m.nir", m, r)


@fuzz(40)
@given(m=BYTE_MUTATION)
def test_netx_bytes(work, netx_file, m):
    """Lava netx files we write carry the tree's SHA-256: a damaged one is an error naming it, never
    changed weights read silently (the long heap fuzz found h5py OSErrors here before)."""
    r = ref("netx", lambda: _netx_state(netx_file))
    _bytes_case("netx", _netx_state, netx_file, work / "m.net", m, r)


@fuzz(30)
@given(m=BYTE_MUTATION)
def test_trace_file_bytes(work, trace_file, m):
    r = ref("trace", lambda: read_trace(trace_file))
    _bytes_case("trace", read_trace, trace_file, work / "m_trace.h5", m, r)


@fuzz(12)
@given(m=BYTE_MUTATION, which=st.integers(0, 100))
def test_trace_partial_bytes(work, trace_partial, m, which):
    r = ref("partial", lambda: read_trace(trace_partial))
    dst = work / "m_trace.h5.partial"
    if not dst.is_dir():
        shutil.copytree(trace_partial, dst)
    parts = sorted(dst.glob("part_*.h5"))
    victim = parts[which % len(parts)]
    good = victim.read_bytes()
    victim.write_bytes(mutate(good, m))
    try:
        kind, out = verdict("trace.partial", read_trace, dst, names=[victim.name, dst.name])
    finally:
        victim.write_bytes(good)
    if kind == "ok":
        assert same(r, out), f"trace.partial: mutation {m[:3]} of {victim.name} read as different data"


@fuzz(8)
@given(op=st.sampled_from(["drop", "duplicate", "swap", "empty", "stray"]), which=st.integers(0, 100))
def test_trace_partial_parts(work, trace_partial, op, which):
    """Parts lost, duplicated (overlapping updates), swapped (updates backwards) or foreign."""
    r = ref("partial", lambda: read_trace(trace_partial))
    dst = work / "p_trace.h5.partial"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(trace_partial, dst)
    parts = sorted(dst.glob("part_*.h5"))
    a, b = parts[which % len(parts)], parts[(which + 1) % len(parts)]
    if op == "drop":
        a.unlink()
    elif op == "duplicate":
        shutil.copy(a, dst / "part_00000090.h5")
    elif op == "swap" and a != b:
        tmp = dst / "x"
        a.rename(tmp), b.rename(a), tmp.rename(b)
    elif op == "empty":
        for p in parts:
            p.unlink()
    else:
        (dst / "part_00000091.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 200)
    kind, out = verdict("trace.partial", read_trace, dst, names=[dst.name, "part_"])
    if kind == "ok" and op != "drop":
        assert same(r, out) or op == "swap" and a == b


@fuzz(300)
@given(m=BYTE_MUTATION)
def test_checkpoint_bytes(work, checkpoint_file, m):
    r = ref("checkpoint", lambda: load_checkpoint(checkpoint_file))
    _bytes_case("checkpoint", load_checkpoint, checkpoint_file, work / "m_last.pt", m, r)


CONFIG_TEXT = dump_toml(RunConfig(seed=3).validate())


@fuzz(300)
@given(m=BYTE_MUTATION)
def test_config_bytes(work, m):
    src = work / "src_config.toml"
    src.write_text(CONFIG_TEXT)
    _bytes_case("config", load_config, src, work / "m_config.toml", m,
                check=lambda cfg: isinstance(cfg, RunConfig) and cfg.validate())


def _valid_events(ev):
    assert ev.dtype.names == ("x", "y", "t", "p")
    if len(ev):
        assert ev["x"].max() < 34 and ev["y"].max() < 34 and ev["x"].min() >= 0 and set(np.unique(ev["p"])) <= {0, 1}
        assert (np.diff(ev["t"]) >= 0).all()


@fuzz(300)
@given(m=BYTE_MUTATION)
def test_nmnist_bytes(work, m):
    src = work / "src.bs2"
    src.write_bytes(_nmnist_source())
    _bytes_case("nmnist", read_nmnist_file, src, work / "m.bs2", m, check=_valid_events)


def _valid_idx(a):
    assert isinstance(a, np.ndarray) and a.ndim >= 1


@fuzz(300)
@given(m=BYTE_MUTATION, gz=st.booleans())
def test_idx_bytes(work, m, gz):
    src = work / ("src-idx3-ubyte" + (".gz" if gz else ""))
    blob = idx(np.arange(20 * 7 * 7, dtype=np.uint8).reshape(20, 7, 7))
    src.write_bytes(gzip.compress(blob, mtime=0) if gz else blob)
    _bytes_case("idx", read_idx, src, work / ("m-idx3-ubyte" + (".gz" if gz else "")), m, check=_valid_idx)


@fuzz(20)
@given(m=BYTE_MUTATION)
def test_mnist_standard_file_bytes(work, m):
    """The real t10k labels archive, mutated: load_mnist's known md5 refuses every change."""
    real = shared_data_dir() / "MNIST" / "raw"
    if not (real / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("shared MNIST not found")
    root = work / "mnist_root"
    raw = root / "MNIST" / "raw"
    if not raw.is_dir():
        raw.mkdir(parents=True)
        shutil.copy(real / "t10k-images-idx3-ubyte.gz", raw)
    ref_labels = np.frombuffer(gzip.decompress((real / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:], np.uint8)
    dst = raw / "t10k-labels-idx1-ubyte.gz"
    dst.write_bytes(mutate((real / "t10k-labels-idx1-ubyte.gz").read_bytes(), m))
    kind, out = verdict("mnist", lambda p: mnist_mod.load_mnist(root, "test")[1], dst)
    if kind == "ok":
        assert np.array_equal(out.numpy(), ref_labels), "a changed MNIST file loaded with different labels"


def _valid_shd(out):
    events, labels = out
    assert len(events) == len(labels) and (labels >= 0).all() and (labels < 20).all()
    for ev in events:
        if len(ev):
            assert ev["x"].min() >= 0 and ev["x"].max() < 700 and ev["t"].min() >= 0


HANG_SHD = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "fuzz_hang_shd.h5"


@fuzz(200)
@given(m=BYTE_MUTATION)
@example(m=("zero", 3444.5 / 9013, 54, b"\0"))     # the long run's libhdf5 hang (zeroed global heap)
def test_shd_bytes(work, shd_file, m):
    _bytes_case("shd", read_shd_file, shd_file, work / "m_shd.h5", m, check=_valid_shd)


def test_shd_file_that_hangs_libhdf5(work, shd_file):
    """The long run's case (benchmarks/results/fuzz_hang_shd.h5: the source SHD file with 54 bytes
    of its global heap zeroed; libhdf5 loops forever reading 'spikes/times'): the reader's
    worker is stopped after the timeout and the read is a FileFormatError naming the file."""
    assert HANG_SHD.read_bytes() == mutate(shd_file.read_bytes(), ("zero", 3444.5 / 9013, 54, b"\0"))
    kind, e = verdict("shd", read_shd_file, HANG_SHD)
    assert kind == "error" and "stalled" in str(e), e


# ------------------------------------------------------------------ crafted files per reader
HUGE = 1 << 36


def _huge(group, name, dtype="f8", shape_tail=()):
    """Replace dataset ``name`` by one declared with 2³⁶ rows and no data written."""
    if name in group:
        del group[name]
    group.create_dataset(name, shape=(HUGE,) + shape_tail, maxshape=(None,) + shape_tail,
                         chunks=(1024,) + shape_tail, dtype=dtype, compression="gzip")


def pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def _h5_edit(kind: str, f, rng, target: str):
    """One structural change of dataset ``target`` of the open file."""
    if kind == "huge":
        ds = f[target]
        _huge(ds.parent, ds.name.rsplit("/", 1)[1], ds.dtype if ds.dtype.kind != "O" else "f8", ds.shape[1:])
    elif kind == "huge_plain":
        ds = f[target]
        parent, name = ds.parent, ds.name.rsplit("/", 1)[1]
        del parent[name]
        parent.create_dataset(name, shape=(HUGE,), dtype="f8")      # contiguous, never written
    elif kind == "dtype":
        ds = f[target]
        parent, name = ds.parent, ds.name.rsplit("/", 1)[1]
        n = int(np.prod(ds.shape)) if ds.shape else 1
        del parent[name]
        parent[name] = np.array([b"x" * 3] * max(n, 1)) if rng.random() < 0.5 else np.zeros(max(n, 1), np.complex64)
    elif kind == "shape":
        ds = f[target]
        parent, name = ds.parent, ds.name.rsplit("/", 1)[1]
        data = np.asarray(ds[()])
        if data.dtype.kind == "O":
            data = np.zeros(data.shape, np.float32)
        del parent[name]
        parent[name] = np.resize(data.reshape(-1), int(rng.integers(0, 9))) if rng.random() < 0.5 else \
            np.stack([data, data]) if data.ndim else np.zeros((2, 2))
    elif kind == "nonfinite":
        ds = f[target]
        if ds.dtype.kind == "f" and ds.size:
            data = np.asarray(ds[()]).copy()
            data.reshape(-1)[int(rng.integers(0, data.size))] = pick(rng, [np.nan, np.inf, -np.inf, -1.0])
            ds[...] = data
    elif kind == "negate":
        ds = f[target]
        if ds.dtype.kind in "fi" and ds.size:
            ds[...] = -np.asarray(ds[()]) - 1
    elif kind == "delete":
        del f[target]
    elif kind == "attr":
        obj = f[target]
        keys = list(obj.attrs.keys()) or ["format"]
        k = keys[int(rng.integers(0, len(keys)))]
        values = [np.array([1e300, -1]), "nonsense", np.int64(-5), np.zeros((3, 3))]
        obj.attrs[k] = values[int(rng.integers(0, len(values)))]


H5_KINDS = ["huge", "huge_plain", "dtype", "shape", "nonfinite", "negate", "delete", "attr"]


def _datasets(path) -> list[str]:
    out = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(out)


def _groups(path) -> list[str]:
    out = ["/"]
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Group) else None)
    return sorted(out)


def _crafted_h5(src: Path, dst: Path, kind: str, pick: int, seed: int, restamp: bool) -> None:
    shutil.copy(src, dst)
    rng = np.random.default_rng(seed)
    names = _groups(src) if kind == "attr" else _datasets(src)
    with h5py.File(dst, "r+") as f:
        _h5_edit(kind, f, rng, names[pick % len(names)])
        if restamp and kind.startswith("huge"):      # (its digest would take reading 2^36 rows)
            f.attrs[DIGEST_ATTR] = "0" * 64
        elif restamp:
            stamp_h5_digest(f)


CRAFT = dict(kind=st.sampled_from(H5_KINDS), pick=st.integers(0, 10_000), seed=st.integers(0, 2**16),
             restamp=st.booleans())


@fuzz(25)
@given(**CRAFT)
def test_nir_crafted(work, nir_file, kind, pick, seed, restamp):
    dst = work / "c.nir"
    _crafted_h5(nir_file, dst, kind, pick, seed, restamp)
    verdict("nir", lambda p: model_state(from_nir(p)), dst, traced=kind.startswith("huge"))


@fuzz(25)
@given(**CRAFT)
def test_trace_crafted(work, trace_file, kind, pick, seed, restamp):
    dst = work / "c_trace.h5"
    _crafted_h5(trace_file, dst, kind, pick, seed, restamp)
    verdict("trace", read_trace, dst, traced=kind.startswith("huge"))


@fuzz(60)
@given(**CRAFT)
def test_shd_crafted(work, shd_file, kind, pick, seed, restamp):
    dst = work / "c_shd.h5"
    _crafted_h5(shd_file, dst, kind, pick, seed, False)
    kind_, out = verdict("shd", read_shd_file, dst, traced=kind.startswith("huge"))
    if kind_ == "ok":
        _valid_shd(out)


@fuzz(40)
@given(case=st.sampled_from(["unit_range", "negative_time", "nan_time", "label_range", "times_2d", "late"]),
       seed=st.integers(0, 2**16))
def test_shd_values(work, case, seed):
    rng = np.random.default_rng(seed)
    samples = [_shd_sample(rng, int(rng.integers(1, 20))) for _ in range(3)]
    times, units, labels = [s[0] for s in samples], [s[1] for s in samples], [1, 2, 3]
    i = int(rng.integers(0, 3))
    dst = work / "v_shd.h5"
    dt = np.float32
    if case == "unit_range":
        units[i] = units[i].copy()
        units[i][0] = 700 + int(rng.integers(0, 60000))
    elif case == "negative_time":
        times[i] = times[i] - 2.0
    elif case == "nan_time":
        times[i] = times[i].copy()
        times[i][0] = np.nan
    elif case == "late":
        times[i] = times[i] + 1e7
    elif case == "label_range":
        labels[i] = 20 + int(rng.integers(0, 200))
    if case == "times_2d":
        with h5py.File(dst, "w") as f:
            f["spikes/times"] = np.zeros((3, 4))
            f["spikes/units"] = np.zeros((3, 4), np.uint16)
            f["labels"] = np.asarray(labels, np.uint8)
    else:
        _write_shd(dst, times, units, labels, dt)
    kind, e = verdict("shd", read_shd_file, dst)
    assert kind == "error", f"SHD case {case} was read"


TRACE_VALUE_CASES = ["updates_backwards", "index_range", "index_negative", "rows_mismatch", "edges"]


@fuzz(8)
@given(case=st.sampled_from(TRACE_VALUE_CASES), seed=st.integers(0, 2**16))
def test_trace_values(work, trace_file, case, seed):
    """Crafted traces with a valid checksum whose values break the schema."""
    rng = np.random.default_rng(seed)
    dst = work / "v_trace.h5"
    shutil.copy(trace_file, dst)
    with h5py.File(dst, "r+") as f:
        layer = f["layers"][sorted(f["layers"].keys())[0]]
        while not any(isinstance(v, h5py.Dataset) for v in layer.values()):
            layer = layer[sorted(layer.keys())[0]]
        if case == "updates_backwards":
            key = pick(rng, ["summary_updates", "tracked_updates"])
            u = f[key][()]
            del f[key]
            f[key] = u[::-1].copy()
        elif case in ("index_range", "index_negative"):
            idx_ = layer["tracked_index"][()].copy()
            idx_[int(rng.integers(0, len(idx_)))] = (-1 - int(rng.integers(0, 9))) if case == "index_negative" \
                else int(layer.attrs["numel"]) + int(rng.integers(0, 99))
            del layer["tracked_index"]
            layer["tracked_index"] = idx_
        elif case == "rows_mismatch":
            k = pick(rng, ["sigma_mean", "tracked_mu", "sigma_hist"])
            data = layer[k][()]
            del layer[k]
            layer[k] = data[:-1]
        else:
            edges = layer["sigma_hist"].attrs["edges"][::-1].copy()
            layer["sigma_hist"].attrs["edges"] = edges
        stamp_h5_digest(f)
    kind, _ = verdict("trace", read_trace, dst)
    assert kind == "error", f"trace case {case} was read"


def _state_edit(payload, kind, rng):
    state = payload["model"]
    keys = sorted(state)
    k = keys[int(rng.integers(0, len(keys)))]
    if kind == "shape":
        state[k] = torch.zeros(int(rng.integers(0, 30)))
    elif kind == "dtype":
        state[k] = state[k].to(pick(rng, [torch.int64, torch.bool, torch.complex64, torch.float16]))
    elif kind == "nonfinite":
        v = state[k].clone()
        if v.is_floating_point() and v.numel():
            v.view(-1)[int(rng.integers(0, v.numel()))] = float(pick(rng, [np.nan, np.inf, -np.inf]))
        state[k] = v
    elif kind == "negative_sigma":
        sk = [x for x in keys if x.endswith("_sigma")]
        state[sk[int(rng.integers(0, len(sk)))]] = -state[sk[0]].abs() if rng.random() < 0.5 else \
            torch.zeros_like(state[sk[0]])
    elif kind == "not_tensor":
        state[k] = pick(rng, ["text", 3, None, [1.0, 2.0]])
    elif kind == "drop":
        del state[k]
    elif kind == "spec_huge":
        payload["model_spec"]["sizes"] = [5, int(pick(rng, [10**6, 10**9, 2**40])), 3]
    elif kind == "spec_type":
        payload["model_spec"][pick(rng, ["sizes", "class", "neuron", "readout"])] = pick(rng, 
            ["x", -1, [1.5, "a"], {"a": 1}, None])
    elif kind == "no_model":
        payload["model"] = pick(rng, ["x", [], None])


STATE_KINDS = ["shape", "dtype", "nonfinite", "negative_sigma", "not_tensor", "drop", "spec_huge", "spec_type",
               "no_model"]


@fuzz(80)
@given(kind=st.sampled_from(STATE_KINDS), seed=st.integers(0, 2**16))
def test_checkpoint_crafted(work, kind, seed):
    """Checkpoints with a valid SHA-256 and a crafted payload, through load_run_model."""
    rng = np.random.default_rng(seed)
    payload = _payload()
    _state_edit(payload, kind, rng)
    run = work / "c_run"
    path = run / "checkpoints" / "last.pt"
    if path.exists():
        path.unlink()
    save_checkpoint(path, payload)
    kind_, out = verdict("checkpoint", lambda p: load_run_model(run), path, names=["last.pt"],
                         traced=kind == "spec_huge")
    if kind_ == "ok":
        st_ = out.state_dict()
        for k, v in st_.items():
            assert not v.is_floating_point() or bool(torch.isfinite(v).all()), f"non-finite {k} loaded"
            if k.endswith("_sigma"):
                assert bool((v > 0).all()), f"σ <= 0 in {k} loaded"


@fuzz(150)
@given(case=st.sampled_from(["range", "backwards", "overflows", "size5"]), seed=st.integers(0, 2**16))
def test_nmnist_values(work, case, seed):
    rng = np.random.default_rng(seed)
    raw = np.frombuffer(_events(200, seed), np.uint8).reshape(-1, 5).copy()
    i = int(rng.integers(1, len(raw)))
    if case == "range":
        raw[i, int(rng.integers(0, 2))] = int(rng.integers(34, 240))
    elif case == "backwards":
        raw[i - 1, 2:], raw[i, 2:] = raw[i, 2:].copy(), raw[i - 1, 2:].copy()
        if raw[i - 1, 2:].tobytes() == raw[i, 2:].tobytes():
            raw[i, 2:] = 0
            raw[i - 1, 2] |= 0x7F
    elif case == "overflows":
        raw = np.tile(np.array([[0, 240, 0, 0, 0]], np.uint8), (2000, 1))
    dst = work / "v.bs2"
    blob = raw.tobytes() + (b"\0\0" if case == "size5" else b"")
    dst.write_bytes(blob)
    kind, out = verdict("nmnist", read_nmnist_file, dst)
    assert kind == "error" or case == "backwards" and (np.diff(out["t"]) >= 0).all(), case


@fuzz(500)
@given(code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]), dims=st.lists(
    st.sampled_from([0, 1, 7, 2**12, 2**31, 2**32 - 1]), min_size=0, max_size=4), gz=st.booleans(),
    body=st.integers(0, 4096))
def test_idx_headers(work, code, dims, gz, body):
    """Headers declaring any type and shape (up to (2^32-1)^4 items) over a small body."""
    blob = bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + b"\x05" * body
    dst = work / ("h-idx-ubyte" + (".gz" if gz else ""))
    dst.write_bytes(gzip.compress(blob, mtime=0) if gz else blob)
    kind, out = verdict("idx", read_idx, dst, traced=True)
    if kind == "ok":
        assert out.shape == tuple(dims) and out.nbytes <= body


TOML_VALUES = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=20), st.booleans(),
                        st.lists(st.integers(-10, 10**12), max_size=4), st.just("\x00\x1f"))


def _toml(v) -> str:
    import json
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if v in (float("inf"), float("-inf")) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml, v)) + "]"
    return str(v)


@fuzz(200)
@given(line=st.integers(0, 200), value=TOML_VALUES, extra=st.sampled_from(["", "unknown", "nested", "deep"]))
def test_config_values(work, line, value, extra):
    """Every field of a valid config replaced by a value of any type; unknown and nested keys."""
    lines = CONFIG_TEXT.splitlines()
    fields = [i for i, ln in enumerate(lines) if " = " in ln]
    i = fields[line % len(fields)]
    lines[i] = lines[i].split(" = ")[0] + " = " + _toml(value)
    if extra == "unknown":
        lines.append("mystery = 1")
    elif extra == "nested":
        lines.append("[model.sub]\nx = 1")
    elif extra == "deep":
        lines.insert(0, "deep = " + "[" * 5000 + "]" * 5000)
    dst = work / "v_config.toml"
    dst.write_text("\n".join(lines) + "\n")
    verdict("config", load_config, dst)


def test_zz_fuzz_case_count():
    """The CI run covers at least 2,000 cases over the readers (when the whole file runs)."""
    if len(COUNTS) < 8:
        pytest.skip("only part of the fuzz file ran")
    assert sum(COUNTS.values()) >= 2000, COUNTS
