"""Helpers for the data-layer tests: locate the shared real data or skip."""

from __future__ import annotations

import os
from pathlib import Path

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
