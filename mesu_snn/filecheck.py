"""Guards shared by every file reader (layer 0: imports only :mod:`mesu_snn.errors`).

Bounds, checked *before* anything is allocated (the fuzz test ``tests/test_fuzz_readers.py``
holds every reader to them):

* no reader allocates for a file's contents more than :data:`MAX_EXPANSION` (1032, deflate's
  largest possible compression ratio) times the file's size plus 1 MiB: data stored without a
  filter must fit in the file (``declared bytes <= file size``), compressed data in 1032 × it.
  A header declaring more (an idx file claiming 2³⁶ items, an HDF5 dataset declared huge) is a
  :class:`~mesu_snn.errors.FileFormatError` naming the file, raised before the allocation;
* HDF5 files we write carry the SHA-256 of their whole tree (every dataset's dtype, shape and
  bytes, every attribute, every name) as the root attribute :data:`DIGEST_ATTR`; a file that
  has the attribute is verified on read, so a changed byte is an error, never silently
  different data. Files without it (third-party NIR graphs, files from before) are read as
  they are.

Reading HDF5 in a worker process, so that no file can hang or crash ours. libhdf5 can loop forever inside C on a corrupt file: the long fuzz run found an SHD file whose
damaged global heap (the store of variable-length data) makes reading ``spikes/times`` spin at
100 % CPU, out of reach of Python signals (``benchmarks/results/fuzz_hang_shd.h5``). No check
in Python can rule that out before the read, so :func:`read_h5_isolated` leaves every libhdf5
call on the file (open, the size guards above, the reads) to a worker process that imports only
numpy, h5py and this package's layer-0 modules (not torch), and waits for it with a timeout;
:func:`open_h5`, which every other HDF5 reader uses, first has the worker read the whole file
(:func:`probe_h5`):

* the worker is started once (its ~0.3 s of imports are paid once per process, not per file)
  and reused; it leaves by itself after :data:`IDLE_S` idle seconds or when we exit;
* a request names the file and the datasets wanted; the worker writes them into a fresh
  temporary folder as one ``.npz`` (variable-length datasets flattened: values + offsets, so
  no object arrays and no pickle), which we load with ``allow_pickle=False``; the folder is
  removed in every case;
* no answer within the timeout (default :func:`default_timeout`, ``$MESU_SNN_H5_TIMEOUT``
  seconds if set) -> the worker is killed (SIGKILL) and a :class:`FileFormatError` names the
  file and the stall; a worker that dies (a crash inside libhdf5) is one too. The next request
  starts a fresh worker.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .errors import FileFormatError

__all__ = ["MAX_EXPANSION", "SLACK", "DIGEST_ATTR", "allowed_bytes", "check_declared", "check_h5", "check_h5_sizes",
           "h5_digest", "stamp_h5_digest", "foreign_error", "open_h5", "read_h5_isolated", "probe_h5",
           "default_timeout", "TIMEOUT_ENV", "IDLE_S"]

#: deflate (gzip, zlib, HDF5's gzip filter) cannot expand data by more than 1032:1
MAX_EXPANSION = 1032
#: allowance on top of the size bounds (headers, fill values of tiny datasets)
SLACK = 1 << 20
#: root attribute holding the SHA-256 of an HDF5 file's tree
DIGEST_ATTR = "mesu_snn_sha256"


def open_h5(path, kind: str = "HDF5", isolated: bool = True):
    """``h5py.File(path, "r")`` with the one error every reader gives: FileNotFoundError naming
    the path, or a :class:`~mesu_snn.errors.FileFormatError` (a ValueError) naming the file if
    it is not a readable HDF5 file (corrupt, truncated or another format). ``kind`` names what
    was expected in the messages ("SHD", "NIR", "netx", ...).

    With ``isolated`` (always, except inside the reading worker itself), the file is first read
    whole by the worker process of :func:`probe_h5` (see the module):
    libhdf5 loops forever on some corrupt files (a damaged variable-length heap, as in the
    variable-length strings of NIR, σ-trace and netx files), so a file on which it stalls is a
    FileFormatError naming the file after the timeout instead of a hung process."""
    import h5py
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    if isolated:
        probe_h5(path, kind)
    try:
        return h5py.File(path, "r")
    except Exception as e:
        raise FileFormatError(f"{path}: not a readable HDF5 file (expected {kind}; corrupt, truncated or another "
                              f"format): {type(e).__name__}: {str(e)[:300]}") from None


def allowed_bytes(file_size: int, compressed: bool) -> int:
    """The most bytes a reader may allocate for data declared in a file of ``file_size`` bytes."""
    return (MAX_EXPANSION * file_size if compressed else file_size) + SLACK


def check_declared(path, declared: int, file_size: int, compressed: bool, what: str = "data") -> None:
    """FileFormatError naming ``path`` if ``declared`` bytes cannot be stored in ``file_size``
    bytes (see the module's bounds)."""
    limit = allowed_bytes(file_size, compressed)
    if declared > limit:
        raise FileFormatError(f"{path}: declares {declared} bytes of {what}, more than a file of {file_size} bytes "
                              f"can hold ({'compressed, ' if compressed else ''}at most {limit}); the file is "
                              "corrupt and is not read")


def foreign_error(path, kind: str, e: BaseException) -> FileFormatError:
    """One FileFormatError naming ``path`` for an exception a third-party reader raised."""
    msg = str(e).splitlines()[0][:300] if str(e) else ""
    return FileFormatError(f"{path}: damaged or unreadable {kind} ({type(e).__name__}{': ' + msg if msg else ''})")


def _walk(f) -> list:
    """(name, object) of every group and dataset in the file, each object once (hard links to an
    object already seen, cycles included, are not followed again), sorted by name."""
    out = []
    f.visititems(lambda name, obj: out.append((name, obj)))
    return sorted(out, key=lambda t: t[0])


def _check_sizes(objects, path) -> None:
    import h5py
    size = os.path.getsize(path)
    plain = packed = 0
    for name, v in objects:
        if not isinstance(v, h5py.Dataset):
            continue
        n = int(np.prod(v.shape, dtype=object)) * int(v.dtype.itemsize) if v.shape is not None else 0
        if v.chunks and v.id.get_create_plist().get_nfilters():
            packed += n
        else:
            plain += n
        check_declared(path, plain, size, False, f"unfiltered datasets (up to /{name})")
        check_declared(path, packed, size, True, f"compressed datasets (up to /{name})")


def check_h5(f, path, digest: bool = True) -> None:
    """The guards for an open h5py File, in one walk of its tree: FileFormatError naming
    ``path`` if it declares datasets that a file of its size cannot hold (unfiltered data: at
    most the file's size; filtered, e.g. gzip: 1032 × it), so that reading them would allocate
    beyond the bound; then, with ``digest``, if its :data:`DIGEST_ATTR` (when present) does
    not match the tree."""
    try:
        objects = _walk(f)
        _check_sizes(objects, path)
        if digest:
            stored = f.attrs.get(DIGEST_ATTR)
            if stored is not None:
                stored = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else str(stored)
                if _digest(f, objects) != stored:
                    raise FileFormatError(f"{path}: checksum mismatch: the file is corrupt (a changed byte); "
                                          "it is not loaded")
    except FileFormatError:
        raise
    except Exception as e:  # h5py/HDF5 errors on a damaged tree
        raise foreign_error(path, "HDF5 file", e) from None


def check_h5_sizes(f, path) -> None:
    """:func:`check_h5` without the checksum (files of others: SHD)."""
    check_h5(f, path, digest=False)


def _feed(h, value) -> None:
    a = np.asarray(value)
    if a.dtype.kind in "OSU":
        items = a.reshape(-1).tolist()
        h.update(f"s{a.shape}".encode())
        for x in items:
            if isinstance(x, np.ndarray):   # a variable-length sequence
                _feed(h, x)
                continue
            b = x if isinstance(x, bytes) else str(x).encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    else:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())


def h5_digest(f) -> str:
    """SHA-256 (hex) of an open h5py File's whole tree: names, dataset dtypes, shapes and data,
    and every attribute except :data:`DIGEST_ATTR` on the root."""
    return _digest(f, _walk(f))


def _digest(f, objects) -> str:
    import h5py
    h = hashlib.sha256()

    def attrs(obj, root=False):
        for k in sorted(obj.attrs.keys()):
            if root and k == DIGEST_ATTR:
                continue
            h.update(b"a" + k.encode("utf-8", "surrogatepass") + b"\0")
            _feed(h, obj.attrs[k])
    attrs(f, root=True)
    for name, v in objects:
        h.update((b"d" if isinstance(v, h5py.Dataset) else b"g") + name.encode("utf-8", "surrogatepass") + b"\0")
        attrs(v)
        if isinstance(v, h5py.Dataset):
            h.update(f"{v.dtype.str}{v.shape}".encode())
            _feed(h, v[()])
    return h.hexdigest()


def stamp_h5_digest(f) -> None:
    """Write the tree's SHA-256 as the root attribute :data:`DIGEST_ATTR` (``f`` open for writing,
    everything else already written)."""
    f.attrs[DIGEST_ATTR] = h5_digest(f)


# ------------------------------------------------------------------ HDF5 reads in a worker process

#: environment variable: seconds a read may take before it counts as a stall
TIMEOUT_ENV = "MESU_SNN_H5_TIMEOUT"
#: a reading worker leaves after this many idle seconds
IDLE_S = 120.0
#: seconds the worker may take to start (imports), not counted in a read's timeout
START_S = 120.0

# the worker: a stub ``mesu_snn`` package (so that importing this module runs no __init__ and
# no torch), then the request loop; -I keeps PYTHONPATH, user site and the cwd out of sys.path
_BOOT = ("import sys, types\n"
         "pkg = types.ModuleType('mesu_snn'); pkg.__path__ = [sys.argv[1]]; sys.modules['mesu_snn'] = pkg\n"
         "from mesu_snn.filecheck import _serve\n"
         "_serve()\n")


def default_timeout(path) -> float:
    """Seconds a read of ``path`` may take: ``$MESU_SNN_H5_TIMEOUT`` if set, else 60 s plus 1 s
    per 10 MB (the real SHD train file, 0.4 GB, reads in a few seconds)."""
    env = os.environ.get(TIMEOUT_ENV)
    if env:
        try:
            t = float(env)
        except ValueError:
            raise FileFormatError(f"{TIMEOUT_ENV}={env!r} is not a number of seconds") from None
        if not t > 0:
            raise FileFormatError(f"{TIMEOUT_ENV}={env!r} must be > 0 seconds")
        return t
    return 60.0 + os.path.getsize(path) / 10e6


# the worker's side
def _read_spec(path: str, kind: str, spec: dict[str, str]) -> dict[str, np.ndarray]:
    """In the worker: the datasets of ``spec`` ({name: "vlen" | "array"}) after the size
    guards; a "vlen" one as ``name:values`` (all elements concatenated) and ``name:offsets``
    (int64, len + 1)."""
    import h5py
    f = open_h5(path, kind, isolated=False)
    out = {}
    try:
        check_h5_sizes(f, path)
        for i, (key, how) in enumerate(spec.items()):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise FileFormatError(f"{path}: missing dataset '{key}' (not an {kind} file?)")
            ds = f[key]
            base = h5py.check_vlen_dtype(ds.dtype)
            if how == "vlen":
                if ds.ndim != 1 or base is None:
                    raise FileFormatError(f"{path}: '{key}' is {ds.dtype} of shape {ds.shape}, expected a 1-d "
                                          "variable-length dataset")
                if not isinstance(base, np.dtype) or base.kind not in "biuf":
                    what = getattr(base, "__name__", base)
                    raise FileFormatError(f"{path}: '{key}' holds variable-length {what}, expected numbers")
                items = ds[()]
                lengths = np.fromiter((len(a) for a in items), np.int64, len(items))
                out[f"{i}:offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
                out[f"{i}:values"] = (np.concatenate([np.asarray(a, base).reshape(-1) for a in items])
                                      if len(items) else np.zeros(0, base))
            else:
                a = np.asarray(ds[()])
                if a.dtype.kind in "OV" or base is not None:
                    raise FileFormatError(f"{path}: '{key}' is {ds.dtype}, expected plain numbers")
                out[f"{i}:array"] = a
    except FileFormatError:
        raise
    except Exception as e:          # h5py/HDF5 errors on a damaged file
        raise FileFormatError(f"{path}: cannot read as HDF5 ({type(e).__name__}: {str(e)[:300]})") from None
    finally:
        f.close()
    return out


def _probe(path: str, kind: str) -> dict:
    """In the worker: open ``path`` and read every attribute and every dataset once (those a
    file of its size can hold: the bounds above), so that any libhdf5 code a reader of the file could reach has run here first. Python-level errors are skipped
    (the reader in our process reports them in its own words); only a stall or a crash counts."""
    import h5py
    f = open_h5(path, kind, isolated=False)
    size = os.path.getsize(path)

    def attrs(obj):
        try:
            keys = list(obj.attrs.keys())
        except Exception:       # noqa: BLE001
            return
        for k in keys:
            try:
                obj.attrs[k]
            except Exception:   # noqa: BLE001
                pass

    def visit(name, obj):
        attrs(obj)
        if isinstance(obj, h5py.Dataset):
            try:
                n = int(np.prod(obj.shape, dtype=object)) * int(obj.dtype.itemsize) if obj.shape is not None else 0
                if n <= allowed_bytes(size, True):
                    obj[()]
            except Exception:   # noqa: BLE001
                pass
    try:
        attrs(f)
        try:
            f.visititems(visit)
        except Exception:       # noqa: BLE001
            pass
    finally:
        f.close()
    return {}


def _die_with_parent() -> None:
    """Linux: the kernel kills the worker when we die (a worker stuck inside libhdf5 would
    otherwise spin on as an orphan)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
    except Exception:           # noqa: BLE001 - not Linux: EOF on stdin still ends an idle worker
        pass


def _serve() -> None:
    """The worker's loop: one JSON request per line on stdin, one JSON reply per line on the
    private copy of stdout (fd 1 itself goes to stderr, so that nothing else can garble the
    replies). Leaves on EOF or after :data:`IDLE_S` idle seconds."""
    _die_with_parent()
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    reply.write('{"ready": true}\n')
    reply.flush()
    inp = sys.stdin.buffer
    while True:
        if not select.select([inp], [], [], IDLE_S)[0]:
            return
        line = inp.readline()
        if not line:
            return
        req = json.loads(line)
        try:
            if req.get("probe"):
                _probe(req["path"], req["kind"])
            else:
                arrays = _read_spec(req["path"], req["kind"], req["spec"])
                np.savez(os.path.join(req["out"], "data.npz"), **arrays)
            ans = {"ok": True}
        except FileFormatError as e:
            ans = {"error": str(e)}
        except Exception as e:      # noqa: BLE001 - anything else still names the file
            ans = {"error": f"{req.get('path')}: cannot read ({type(e).__name__}: {str(e)[:300]})"}
        reply.write(json.dumps(ans) + "\n")
        reply.flush()


# our side
_LOCK = threading.Lock()
_PROC: subprocess.Popen | None = None
_OWNER: int | None = None


def _drop(kill: bool) -> None:
    global _PROC
    p, _PROC = _PROC, None
    if p is None or _OWNER != os.getpid():
        return
    if kill and p.poll() is None:
        p.kill()
    try:
        p.stdin.close()
    except OSError:
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        p.kill()
        p.wait()
    p.stdout.close()


def _worker() -> subprocess.Popen:
    """The running worker of this process, started if there is none (or it left)."""
    global _PROC, _OWNER
    if _PROC is not None and (_OWNER != os.getpid() or _PROC.poll() is not None):
        if _OWNER != os.getpid():       # forked: that worker is our parent's
            _PROC = None
        else:
            _drop(False)
    if _PROC is None:
        pkg = str(Path(__file__).resolve().parent)
        p = subprocess.Popen([sys.executable, "-I", "-c", _BOOT, pkg], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)
        _PROC, _OWNER = p, os.getpid()
        if not select.select([p.stdout], [], [], START_S)[0] or not p.stdout.readline():
            _drop(True)
            raise RuntimeError(f"the HDF5 reading worker ({sys.executable}) did not start within {START_S:g} s")
    return _PROC


def _ask(req: dict, path: Path, kind: str, timeout: float) -> dict:
    line = (json.dumps(req) + "\n").encode()
    for attempt in (0, 1):
        p = _worker()
        try:
            p.stdin.write(line)
            p.stdin.flush()
        except OSError:                 # it had just left (idle): start another
            _drop(True)
            continue
        t0 = time.monotonic()
        if not select.select([p.stdout], [], [], timeout)[0]:
            _drop(True)
            raise FileFormatError(
                f"{path}: reading the {kind} file stalled: no result after {timeout:g} s, the reader process was "
                f"stopped (libhdf5 loops on some corrupt files, e.g. a damaged variable-length heap). If the file is "
                f"sound but very large or on slow storage, set {TIMEOUT_ENV} to more seconds")
        ans = p.stdout.readline()
        if ans:
            return json.loads(ans)
        rc = p.wait()
        _drop(False)
        if rc == 0 and attempt == 0 and time.monotonic() - t0 < 1.0:
            continue                    # it left idle as the request came: once more
        raise FileFormatError(f"{path}: the {kind} reader process died reading the file (exit status {rc}: a crash "
                              "inside libhdf5 on a corrupt file)")
    raise FileFormatError(f"{path}: the {kind} reader process could not be reached")  # pragma: no cover


def read_h5_isolated(path, spec: dict[str, str], kind: str = "HDF5",
                     timeout: float | None = None) -> dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]]:
    """The datasets ``spec`` ({name: "vlen" | "array"}) of HDF5 file ``path``, read by the
    worker process (see the module): {name: array} for "array" (plain numbers, any shape),
    {name: (values, offsets)} for "vlen" (a 1-d variable-length dataset of numbers; element i
    is ``values[offsets[i]:offsets[i + 1]]``).

    FileNotFoundError if there is no such file; :class:`FileFormatError` naming the file if it
    is not readable HDF5, declares more than it can hold (:func:`check_h5_sizes`),
    lacks a dataset or holds the wrong kind, or if the read does not finish within ``timeout``
    seconds (default :func:`default_timeout`) or kills the worker."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    timeout = default_timeout(path) if timeout is None else float(timeout)
    tmp = tempfile.mkdtemp(prefix="mesu_snn_h5_")
    try:
        with _LOCK:
            ans = _ask({"path": str(path.resolve()), "kind": kind, "spec": dict(spec), "out": tmp},
                       path, kind, timeout)
        if "error" in ans:
            msg = str(ans["error"]).replace(str(path.resolve()), str(path))
            raise FileFormatError(msg)
        with np.load(os.path.join(tmp, "data.npz"), allow_pickle=False) as z:
            got = {k: z[k] for k in z.files}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict = {}
    for i, (key, how) in enumerate(spec.items()):
        out[key] = (got[f"{i}:values"], got[f"{i}:offsets"]) if how == "vlen" else got[f"{i}:array"]
    return out


def probe_h5(path, kind: str = "HDF5", timeout: float | None = None) -> None:
    """Prove, in the worker, that libhdf5 finishes on ``path``: it reads every attribute and
    dataset once (:func:`_probe`). :class:`FileFormatError` naming the file if that stalls
    beyond ``timeout`` seconds (default :func:`default_timeout`) or kills the worker; other
    problems are left to the reader. :func:`open_h5` calls it before it
    opens a file in our process, so every HDF5 reader of the package (NIR, σ trace, netx,
    online state) is covered; the SHD reader reads through the worker altogether."""
    path = Path(path)
    timeout = default_timeout(path) if timeout is None else float(timeout)
    with _LOCK:     # an error reply (not HDF5, ...) is the reader's to report, in its own words
        _ask({"path": str(path.resolve()), "kind": kind, "probe": True}, path, kind, timeout)


atexit.register(lambda: _drop(True))
