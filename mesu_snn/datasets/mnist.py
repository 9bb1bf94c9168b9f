"""MNIST and Fashion-MNIST from the standard idx files (torchvision layout).

Files live in ``<root>/MNIST/raw/`` or ``<root>/FashionMNIST/raw/`` as
``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` either uncompressed or ``.gz``
(the uncompressed file wins when both exist).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import FileFormatError
from ..filecheck import check_declared
from .root import ENV_VAR, resolve_data_root

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

# md5 of the official .gz archives (the values torchvision checks).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# md5 of the same four MNIST files uncompressed (computed from the archives above, which match
# torchvision's values); Fashion-MNIST's uncompressed files have no published checksum here.
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPLIT_SIZES = {"train": 60000, "test": 10000}
#: set to "0" to skip the checksum check of the standard files (custom idx files under the
#: standard names); the same as ``load_mnist(..., verify=False)``
VERIFY_ENV = "MESU_SNN_VERIFY_DATA"
# files whose checksum matched, by (path, size, mtime): not hashed again in this process
_VERIFIED: set[tuple[str, int, int]] = set()

# idx type byte -> numpy big-endian dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Indirection so tests can serve bytes without network.
_urlopen = urllib.request.urlopen


def _idx_header(head: bytes, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, dims, header length) of an idx blob's first bytes (FileFormatError if malformed)."""
    if len(head) < 4:
        raise FileFormatError(f"{name}: too short for an idx header ({len(head)} bytes)")
    zero0, zero1, type_code, ndim = head[0], head[1], head[2], head[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise FileFormatError(f"{name}: bad idx magic number 0x{int.from_bytes(head[:4], 'big'):08X}")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise FileFormatError(f"{name}: truncated idx header ({len(head)} < {header} bytes)")
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return _IDX_DTYPES[type_code], dims, header


def _idx_array(data: bytes, dtype: np.dtype, dims: tuple[int, ...], header: int, name: str) -> np.ndarray:
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise FileFormatError(f"{name}: idx file {kind}: {len(data)} bytes, expected {expected} for shape {dims}")
    try:
        arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    except ValueError as exc:   # e.g. an empty array with dimensions numpy cannot index
        raise FileFormatError(f"{name}: idx shape {dims} cannot be represented ({exc})") from None
    return arr.astype(dtype.newbyteorder("="))


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode one idx blob (big-endian header: 0, 0, type, ndim, dims) to a numpy array."""
    dtype, dims, header = _idx_header(data[:1024], name)
    return _idx_array(data, dtype, dims, header, name)


def _read_idx(path: Path, digest: bool) -> tuple[np.ndarray, str | None]:
    """(array, md5 of the file's bytes or None). Declared sizes are checked against the file's
    size before anything that large is allocated: an uncompressed file must hold exactly what its
    header declares, a ``.gz`` at most 1032 times its size (deflate's limit), and it is
    decompressed only up to the declared size."""
    raw = path.read_bytes()
    md5 = hashlib.md5(raw).hexdigest() if digest else None
    if path.suffix != ".gz":
        return parse_idx(raw, str(path)), md5
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            head = f.read(4)
            if len(head) == 4 and 0 < head[3]:
                head += f.read(4 * head[3])
            dtype, dims, header = _idx_header(head, str(path))
            declared = math.prod(dims) * dtype.itemsize
            check_declared(path, header + declared, len(raw), compressed=True, what=f"idx data of shape {dims}")
            data = head + f.read(declared)
            extra = f.read(1)                      # also makes gzip check its CRC and length
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise FileFormatError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    return _idx_array(data + extra, dtype, dims, header, str(path)), md5


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or uncompressed); FileFormatError (a ValueError) naming the file
    if corrupt, truncated, or declaring more data than the file holds."""
    return _read_idx(Path(path), digest=False)[0]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _raw_folder(root: Path, fashion: bool) -> Path:
    return root / ("FashionMNIST" if fashion else "MNIST") / "raw"


def _download_one(folder: Path, filename: str, md5: str, mirrors: tuple[str, ...]) -> Path:
    """Fetch ``filename`` from the first working mirror, check md5, write atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    errors = []
    for base in mirrors:
        url = base + filename
        try:
            with _urlopen(url, timeout=60) as resp:
                payload = resp.read()
        except OSError as exc:  # URLError, HTTPError, timeouts
            errors.append(f"{url}: {exc}")
            continue
        got = hashlib.md5(payload).hexdigest()
        if got != md5:
            errors.append(f"{url}: md5 mismatch (got {got}, expected {md5})")
            continue
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return target
    raise ValueError(f"could not download {filename} into {folder}:\n  " + "\n  ".join(errors))


def mnist_files(root: Path, split: str, fashion: bool = False) -> tuple[Path, Path]:
    """Expected (.gz) paths of the images and labels idx files for ``split``."""
    prefix = "train" if split == "train" else "t10k"
    folder = _raw_folder(root, fashion)
    return (folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz")


def _existing(gz_path: Path) -> Path | None:
    raw = gz_path.with_suffix("")
    if raw.is_file():
        return raw
    if gz_path.is_file():
        return gz_path
    return None


def _known_md5(path: Path, fashion: bool) -> str | None:
    if path.suffix == ".gz":
        return (FASHION_MD5 if fashion else MNIST_MD5).get(path.name)
    return None if fashion else MNIST_RAW_MD5.get(path.name)


def _load_checked(path: Path, fashion: bool, verify: bool) -> np.ndarray:
    """read_idx, and with ``verify`` the file's md5 against the known value of its name (hashed
    while reading; a file already verified unchanged, by size and mtime, is not hashed again)."""
    known = _known_md5(path, fashion) if verify else None
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    arr, md5 = _read_idx(path, digest=known is not None and key not in _VERIFIED)
    if md5 is not None:
        if md5 != known:
            raise FileFormatError(
                f"{path}: checksum mismatch: md5 {md5}, the standard {'Fashion-' if fashion else ''}MNIST file "
                f"has {known}; the file is corrupt or not the standard one. Delete it to download it again "
                f"(download=True), or pass verify=False (environment: {VERIFY_ENV}=0) for a custom idx file")
        _VERIFIED.add(key)
    return arr


def load_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    fashion: bool = False,
    download: bool = False,
    verify: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST (or Fashion-MNIST with ``fashion=True``).

    Returns ``images`` uint8 (N, 28, 28), pixel values 0..255, and ``labels``
    int64 (N,), values 0..9; N = 60000 (train) or 10000 (test).
    ``root`` is resolved with :func:`resolve_data_root`. With ``download=True``
    missing files (or ``.gz`` files failing md5) are fetched from the official
    mirrors, md5-checked and written atomically. ``verify`` (default: True unless the
    environment sets ``MESU_SNN_VERIFY_DATA=0``): files present are checked against the known
    md5 of the standard files (the ``.gz`` archives; MNIST's uncompressed files too), once per
    process and file version; a mismatch is a FileFormatError naming the file. Pass
    ``verify=False`` for custom idx files stored under the standard names.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if verify is None:
        verify = os.environ.get(VERIFY_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    root = resolve_data_root(root)
    md5s, mirrors = (FASHION_MD5, FASHION_MIRRORS) if fashion else (MNIST_MD5, MNIST_MIRRORS)
    gz_paths = mnist_files(root, split, fashion)
    paths = []
    for gz in gz_paths:
        found = _existing(gz)
        if download and (found is None or (found == gz and _md5(gz) != md5s[gz.name])):
            found = _download_one(gz.parent, gz.name, md5s[gz.name], mirrors)
        paths.append(found)
    if any(p is None for p in paths):
        missing = [str(g) for g, p in zip(gz_paths, paths) if p is None]
        name = "Fashion-MNIST" if fashion else "MNIST"
        raise FileNotFoundError(
            f"{name} {split} files not found: {', '.join(missing)} (or the same names "
            f"without .gz). Get them with load_mnist(..., download=True), or point "
            f"{ENV_VAR} / --data-root at a folder that contains "
            f"{'FashionMNIST' if fashion else 'MNIST'}/raw/."
        )
    images = _load_checked(paths[0], fashion, verify)
    labels = _load_checked(paths[1], fashion, verify)
    n = SPLIT_SIZES[split]
    if images.dtype != np.uint8 or images.shape != (n, 28, 28):
        raise FileFormatError(f"{paths[0]}: expected uint8 images of shape {(n, 28, 28)}, got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (n,):
        raise FileFormatError(f"{paths[1]}: expected uint8 labels of shape {(n,)}, got {labels.dtype} {labels.shape}")
    if labels.max(initial=0) > 9:
        raise FileFormatError(f"{paths[1]}: labels outside 0..9 (max {labels.max()})")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
