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
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .errors import FileFormatError

__all__ = ["MAX_EXPANSION", "SLACK", "DIGEST_ATTR", "allowed_bytes", "check_declared", "check_h5", "check_h5_sizes",
           "h5_digest", "stamp_h5_digest", "foreign_error", "open_h5"]

#: deflate (gzip, zlib, HDF5's gzip filter) cannot expand data by more than 1032:1
MAX_EXPANSION = 1032
#: allowance on top of the size bounds (headers, fill values of tiny datasets)
SLACK = 1 << 20
#: root attribute holding the SHA-256 of an HDF5 file's tree
DIGEST_ATTR = "mesu_snn_sha256"


def open_h5(path, kind: str = "HDF5"):
    """``h5py.File(path, "r")`` with the one error every reader gives: FileNotFoundError naming
    the path, or a :class:`~mesu_snn.errors.FileFormatError` (a ValueError) naming the file if
    it is not a readable HDF5 file (corrupt, truncated or another format). ``kind`` names what
    was expected in the messages ("SHD", "NIR", "netx", ...)."""
    import h5py
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
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
