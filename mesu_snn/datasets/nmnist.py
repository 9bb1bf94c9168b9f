"""N-MNIST event recordings decoded with ``tonic.io.read_mnist_file``.

Layouts under the data root:

* ``official``: ``<root>/NMNIST/{Train,Test}/<digit>/*.bin``, as
  ``tonic.datasets.NMNIST`` extracts the archives; label = folder digit.
* ``small``: ``<root>/NMNIST-small/{train,test}/<id>.bs2`` with label lists
  ``train1K.txt`` / ``test100.txt`` (header ``#sample #class``, then
  ``<id>\\t<class>``), the SLAYER NMNISTsmall subset. Same 5-byte event format.

Events: structured array (x, y, t, p); x, y in 0..33, t in microseconds,
p in {0 (OFF), 1 (ON)}; sensor_size (34, 34, 2).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import FileFormatError, require
from .events import EventDataset
from .root import ENV_VAR, resolve_data_root

SENSOR_SIZE = (34, 34, 2)
# Compact version of tonic.datasets.NMNIST.dtype (same field names and order).
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
FIRST_SACCADE_US = 100_000  # tonic: events["t"] < 1e5
_OFFICIAL = {"train": "Train", "test": "Test"}
_SMALL_LISTS = {"train": "train1K.txt", "test": "test100.txt"}


#: largest N-MNIST/N-Caltech101 recording read (real ones: tens of KB); larger files are refused
MAX_FILE_BYTES = 256 << 20
#: timestamp-overflow markers (y = 240) allowed in one file: a real 300 ms N-MNIST recording has
#: none, and Tonic's reader loops over them (each costs a pass over all events)
MAX_OVERFLOWS = 1024


def read_nmnist_file(path: str | os.PathLike) -> np.ndarray:
    """Decode one N-MNIST ``.bin``/``.bs2`` file (5 bytes/event) with Tonic's reader.

    FileFormatError naming the file if its size is not a multiple of 5 or above
    :data:`MAX_FILE_BYTES`, it holds more than :data:`MAX_OVERFLOWS` overflow markers, an
    address lies outside the 34 × 34 sensor, or timestamps go backwards."""
    path = Path(path)
    size = path.stat().st_size
    if size % 5 != 0:
        raise FileFormatError(f"{path}: size {size} bytes is not a multiple of 5 (N-MNIST event format)")
    if size > MAX_FILE_BYTES:
        raise FileFormatError(f"{path}: {size} bytes, more than an N-MNIST recording holds "
                              f"(at most {MAX_FILE_BYTES} read)")
    raw = np.fromfile(path, dtype=np.uint8)
    overflows = int(np.count_nonzero(raw[1::5] == 240))
    if overflows > MAX_OVERFLOWS:
        raise FileFormatError(f"{path}: {overflows} timestamp-overflow markers (y = 240), more than "
                              f"{MAX_OVERFLOWS}; not an N-MNIST recording")
    read_mnist_file = require("tonic.io", "reading N-MNIST files").read_mnist_file
    events = read_mnist_file(str(path), dtype=EVENT_DTYPE)
    if len(events) and (events["x"].max() >= SENSOR_SIZE[0] or events["y"].max() >= SENSOR_SIZE[1]):
        raise FileFormatError(f"{path}: address outside the 34 x 34 sensor (out-of-range address)")
    if len(events) > 1 and bool((np.diff(events["t"]) < 0).any()):
        i = int(np.argmax(np.diff(events["t"]) < 0))
        raise FileFormatError(f"{path}: timestamps go backwards at event {i + 1} ({int(events['t'][i])} -> "
                              f"{int(events['t'][i + 1])} µs); the file is corrupt")
    return events


def _read_label_list(path: Path) -> list[tuple[str, int]]:
    rows = []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileFormatError(f"{path}: not a UTF-8 text file ({e})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise FileFormatError(f"{path}:{lineno}: expected '<sample id> <class>', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise FileFormatError(f"{path}:{lineno}: class {parts[1]!r} is not an integer") from None
        if not 0 <= label <= 9:
            raise FileFormatError(f"{path}:{lineno}: class {label} outside 0..9")
        if not all(c.isalnum() or c in "_-." for c in parts[0]) or set(parts[0]) == {"."}:
            raise FileFormatError(f"{path}:{lineno}: sample id {parts[0]!r} is not a plain file name")
        rows.append((parts[0], label))
    return rows


def _official_files(folder: Path) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for digit in range(10):
        sub = folder / str(digit)
        if not sub.is_dir():
            continue
        for f in sorted(sub.glob("*.bin")):
            files.append(f)
            labels.append(digit)
    return files, labels


def _small_files(folder: Path, split: str) -> tuple[list[Path], list[int]]:
    rows = _read_label_list(folder / _SMALL_LISTS[split])
    files = []
    for sample_id, _ in rows:
        f = folder / split / f"{sample_id}.bs2"
        if not f.is_file():
            raise FileNotFoundError(f"{f} is listed in {folder / _SMALL_LISTS[split]} but missing")
        files.append(f)
    return files, [label for _, label in rows]


def load_nmnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    layout: str = "auto",
    first_saccade_only: bool = False,
) -> EventDataset:
    """Load N-MNIST recordings into an :class:`EventDataset` (sensor (34, 34, 2)).

    ``layout``: ``"official"``, ``"small"`` or ``"auto"`` (official if
    ``<root>/NMNIST/<Split>/`` exists, else small). ``first_saccade_only``
    keeps events with t < 100 ms, as Tonic does.
    """
    if split not in _OFFICIAL:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if layout not in ("auto", "official", "small"):
        raise ValueError(f"layout must be 'auto', 'official' or 'small', got {layout!r}")
    root = resolve_data_root(root)
    official = root / "NMNIST" / _OFFICIAL[split]
    small = root / "NMNIST-small"
    if layout == "auto":
        layout = "official" if official.is_dir() else "small"
    if layout == "official":
        if not official.is_dir():
            raise FileNotFoundError(
                f"N-MNIST folder {official} not found (expected {official}/<digit>/*.bin as "
                f"tonic.datasets.NMNIST extracts it). Point {ENV_VAR} / --data-root at a copy."
            )
        files, labels = _official_files(official)
        if not files:
            raise FileNotFoundError(f"no <digit>/*.bin files under {official}")
    else:
        if not (small / _SMALL_LISTS[split]).is_file():
            raise FileNotFoundError(
                f"N-MNIST not found: neither {official} nor {small / _SMALL_LISTS[split]} exists. "
                f"Point {ENV_VAR} / --data-root at a folder with NMNIST/ or NMNIST-small/."
            )
        files, labels = _small_files(small, split)
    events = []
    for f in files:
        ev = read_nmnist_file(f)
        if first_saccade_only:
            ev = ev[ev["t"] < FIRST_SACCADE_US]
        events.append(ev)
    return EventDataset(events, labels, SENSOR_SIZE)
