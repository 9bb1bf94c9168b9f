"""Helpers for the data-layer tests: locate the shared real data or skip."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """$MESU_SNN_DATA if set, else <repo>/../shared/data; skip the test if it is missing."""
    env = os.environ.get("MESU_SNN_DATA", "").strip()
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found")
    return path


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def write_shd(path: Path, times, units, labels) -> None:
    """An SHD file in the real layout: spikes/times (vlen float16, s), spikes/units (vlen uint16),
    labels (uint8), extra/keys and extra/speaker."""
    with h5py.File(path, "w") as f:
        vt = h5py.vlen_dtype(np.dtype("float16"))
        vu = h5py.vlen_dtype(np.dtype("uint16"))
        t = f.create_dataset("spikes/times", (len(times),), dtype=vt)
        u = f.create_dataset("spikes/units", (len(units),), dtype=vu)
        for i, (tt, uu) in enumerate(zip(times, units)):
            t[i] = np.asarray(tt, np.float16)
            u[i] = np.asarray(uu, np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, np.uint8))
        f.create_dataset("extra/keys", data=np.array([f"d{i}".encode() for i in range(20)]))
        f.create_dataset("extra/speaker", data=np.zeros(len(labels), np.uint8))
