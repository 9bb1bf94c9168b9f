"""Spiking Heidelberg Digits (SHD) from its ``.h5`` files.

Read with h5py exactly as ``tonic.datasets.hsd.HSD.__getitem__`` does
(tonic's SHD class itself insists on the downloaded ``.zip`` being present,
so it is not used directly): ``spikes/times`` (vlen float, seconds) times 1e6
and cast to int -> ``t`` in microseconds; ``spikes/units`` (vlen uint16) ->
``x`` (channel 0..699); ``p`` = 1; Tonic's dtype and field order (t, x, p).
Labels from ``labels`` (0..19). Read in a worker process with a timeout (libhdf5 can hang on a
corrupt file; see :mod:`mesu_snn.filecheck`). File looked up as ``shd_{split}.h5`` in
``<root>/SHD/`` (tonic's save folder), ``<root>/shd/`` or ``<root>/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from ..filecheck import read_h5_isolated
from .events import EventDataset
from .root import ENV_VAR, resolve_data_root

SENSOR_SIZE = (700, 1, 1)  # tonic.datasets.hsd.HSD.sensor_size (tests check they agree)
EVENT_DTYPE = np.dtype([("t", int), ("x", int), ("p", int)])  # tonic.datasets.hsd.HSD.dtype
N_CHANNELS = 700
N_CLASSES = 20
#: latest spike time accepted (seconds; SHD recordings last about 1 s)
MAX_TIME_S = 3600.0


def shd_path(root: Path, split: str) -> Path | None:
    """First existing ``shd_{split}.h5`` among the searched folders, else None."""
    for folder in (root / "SHD", root / "shd", root):
        f = folder / f"shd_{split}.h5"
        if f.is_file():
            return f
    return None


def read_shd_file(path: str | os.PathLike, timeout: float | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """All recordings of one SHD ``.h5`` file: (list of (t, x, p) arrays, labels int64 (N,)).

    The HDF5 reading runs in a worker process (:func:`mesu_snn.filecheck.read_h5_isolated`):
    libhdf5 can loop forever on a corrupt variable-length heap, so a read that takes more than
    ``timeout`` seconds (default: 60 s + 1 s per 10 MB, or ``$MESU_SNN_H5_TIMEOUT``) stops the
    worker and is a FileFormatError naming the file and the stall.

    FileFormatError naming the file if it is not a readable HDF5 file, declares more data than
    it can hold (checked before reading), lacks a dataset, or holds wrong dtypes or shapes,
    times that are not finite, negative or beyond :data:`MAX_TIME_S`, units outside 0..699 or
    labels outside 0..19."""
    path = Path(path)
    got = read_h5_isolated(path, {"spikes/times": "vlen", "spikes/units": "vlen", "labels": "array"}, "SHD", timeout)
    (t_all, t_off), (u_all, u_off), labels = got["spikes/times"], got["spikes/units"], got["labels"]
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise FileFormatError(f"{path}: labels are {labels.dtype} of shape {labels.shape}, expected 1-d integers")
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise FileFormatError(f"{path}: labels outside 0..{N_CLASSES - 1}")
    labels = labels.astype(np.int64)
    n_t, n_u = len(t_off) - 1, len(u_off) - 1
    if not (n_t == n_u == len(labels)):
        raise FileFormatError(f"{path}: {n_t} times, {n_u} units, {len(labels)} labels")
    if u_all.dtype.kind not in "iu":
        raise FileFormatError(f"{path}: times {t_all.dtype} and units {u_all.dtype}, expected numbers and integers")
    times = [t_all[a:b] for a, b in zip(t_off[:-1], t_off[1:])]
    units = [u_all[a:b] for a, b in zip(u_off[:-1], u_off[1:])]
    events = []
    for i, (tt, uu) in enumerate(zip(times, units)):
        tt, uu = np.asarray(tt), np.asarray(uu)
        if tt.ndim != 1 or uu.ndim != 1 or tt.dtype.kind not in "fiu" or uu.dtype.kind not in "iu":
            raise FileFormatError(f"{path}: sample {i}: times {tt.dtype} and units {uu.dtype}, expected 1-d "
                                  "numbers and integers")
        if len(tt) != len(uu):
            raise FileFormatError(f"{path}: sample {i} has {len(tt)} times but {len(uu)} units")
        if len(uu) and (int(np.min(uu)) < 0 or int(np.max(uu)) >= N_CHANNELS):
            raise FileFormatError(f"{path}: sample {i} has unit {int(np.max(uu))} outside 0..{N_CHANNELS - 1} "
                                  "(out-of-range address)")
        t64 = tt.astype(np.float64)
        if len(t64) and not (np.isfinite(t64).all() and t64.min() >= 0 and t64.max() <= MAX_TIME_S):
            raise FileFormatError(f"{path}: sample {i} has spike times that are not finite, negative or beyond "
                                  f"{MAX_TIME_S} s")
        ev = np.empty(len(tt), dtype=EVENT_DTYPE)   # as tonic.io.make_structured_array(t * 1e6, units, 1)
        ev["t"], ev["x"], ev["p"] = t64 * 1e6, uu, 1
        events.append(ev)
    return events, labels


def load_shd(root: str | os.PathLike | None = None, split: str = "train") -> EventDataset:
    """Load SHD ``split`` ("train"|"test") as an :class:`EventDataset`, sensor (700, 1, 1)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = resolve_data_root(root)
    path = shd_path(root, split)
    if path is None:
        raise FileNotFoundError(
            f"SHD file shd_{split}.h5 not found in {root / 'SHD'}, {root / 'shd'} or {root}. "
            f"Download and unzip shd_{split}.h5.zip from https://zenkelab.org/datasets/ "
            f"(or let tonic.datasets.SHD fetch it), then point {ENV_VAR} / --data-root there."
        )
    events, labels = read_shd_file(path)
    return EventDataset(events, labels, SENSOR_SIZE)
