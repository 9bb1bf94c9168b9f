"""Spiking Heidelberg Digits (SHD) from its ``.h5`` files.

Read with h5py exactly as ``tonic.datasets.hsd.HSD.__getitem__`` does
(tonic's SHD class itself insists on the downloaded ``.zip`` being present,
so it is not used directly): ``spikes/times`` (vlen float, seconds) times 1e6
and cast to int -> ``t`` in microseconds; ``spikes/units`` (vlen uint16) ->
``x`` (channel 0..699); ``p`` = 1; Tonic's dtype and field order (t, x, p).
Labels from ``labels`` (0..19). File looked up as ``shd_{split}.h5`` in
``<root>/SHD/`` (tonic's save folder), ``<root>/shd/`` or ``<root>/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from .events import EventDataset
from .root import ENV_VAR, resolve_data_root

SENSOR_SIZE = (700, 1, 1)  # tonic.datasets.hsd.HSD.sensor_size (tests check they agree)
EVENT_DTYPE = np.dtype([("t", int), ("x", int), ("p", int)])  # tonic.datasets.hsd.HSD.dtype
N_CHANNELS = 700
N_CLASSES = 20


def shd_path(root: Path, split: str) -> Path | None:
    """First existing ``shd_{split}.h5`` among the searched folders, else None."""
    for folder in (root / "SHD", root / "shd", root):
        f = folder / f"shd_{split}.h5"
        if f.is_file():
            return f
    return None


def read_shd_file(path: str | os.PathLike) -> tuple[list[np.ndarray], np.ndarray]:
    """All recordings of one SHD ``.h5`` file: (list of (t, x, p) arrays, labels int64 (N,))."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            for key in ("spikes/times", "spikes/units", "labels"):
                if key not in f:
                    raise ValueError(f"{path}: missing dataset '{key}' (not an SHD file?)")
            times = f["spikes/times"][()]
            units = f["spikes/units"][()]
            labels = np.asarray(f["labels"][()]).astype(np.int64)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read as HDF5 ({exc})") from exc
    if not (len(times) == len(units) == len(labels)):
        raise ValueError(f"{path}: {len(times)} times, {len(units)} units, {len(labels)} labels")
    events = []
    for i, (tt, uu) in enumerate(zip(times, units)):
        if len(tt) != len(uu):
            raise ValueError(f"{path}: sample {i} has {len(tt)} times but {len(uu)} units")
        if len(uu) and int(np.max(uu)) >= N_CHANNELS:
            raise ValueError(f"{path}: sample {i} has unit {int(np.max(uu))} >= {N_CHANNELS}")
        ev = np.empty(len(tt), dtype=EVENT_DTYPE)   # as tonic.io.make_structured_array(t * 1e6, units, 1)
        ev["t"], ev["x"], ev["p"] = tt.astype(np.float64) * 1e6, uu, 1
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
