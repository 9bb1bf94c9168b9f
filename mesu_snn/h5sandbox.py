"""Read HDF5 datasets in a separate process, so that no file can hang or crash ours (layer 0).

libhdf5 can loop forever inside C on a corrupt file: the long fuzz run found an SHD file whose
damaged global heap (the store of variable-length data) makes reading ``spikes/times`` spin at
100 % CPU, out of reach of Python signals (``benchmarks/results/fuzz_hang_shd.h5``). No check
in Python can rule that out before the read, so :func:`read_h5_isolated` leaves every libhdf5
call on the file (open, the size guards of :mod:`mesu_snn.filecheck`, the reads) to a worker
process that imports only numpy, h5py and this package's layer-0 modules (not torch), and waits
for it with a timeout:

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

__all__ = ["read_h5_isolated", "default_timeout", "TIMEOUT_ENV", "IDLE_S"]

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
         "from mesu_snn.h5sandbox import _serve\n"
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


# ------------------------------------------------------------------ the worker's side
def _read_spec(path: str, kind: str, spec: dict[str, str]) -> dict[str, np.ndarray]:
    """In the worker: the datasets of ``spec`` ({name: "vlen" | "array"}) after the size
    guards; a "vlen" one as ``name:values`` (all elements concatenated) and ``name:offsets``
    (int64, len + 1)."""
    import h5py

    from .filecheck import check_h5_sizes, open_h5
    f = open_h5(path, kind)
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


def _serve() -> None:
    """The worker's loop: one JSON request per line on stdin, one JSON reply per line on the
    private copy of stdout (fd 1 itself goes to stderr, so that nothing else can garble the
    replies). Leaves on EOF or after :data:`IDLE_S` idle seconds."""
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
            arrays = _read_spec(req["path"], req["kind"], req["spec"])
            np.savez(os.path.join(req["out"], "data.npz"), **arrays)
            ans = {"ok": True}
        except FileFormatError as e:
            ans = {"error": str(e)}
        except Exception as e:      # noqa: BLE001 - anything else still names the file
            ans = {"error": f"{req.get('path')}: cannot read ({type(e).__name__}: {str(e)[:300]})"}
        reply.write(json.dumps(ans) + "\n")
        reply.flush()


# ------------------------------------------------------------------ our side
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
    is not readable HDF5, declares more than it can hold (:func:`mesu_snn.filecheck.check_h5_sizes`),
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


atexit.register(lambda: _drop(True))
