"""Shared fixtures. Real data: $MESU_SNN_DATA if set, else ../shared/data beside the repo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    env = os.environ.get("MESU_SNN_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} not found (set MESU_SNN_DATA)")
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Soak tests (``@pytest.mark.soak``, also marked slow) run only when asked for: ``-m soak``
    or ``MESU_SNN_SOAK=1``; the default run, CI's, skips them."""
    if os.environ.get("MESU_SNN_SOAK") == "1" or "soak" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: run with -m soak or MESU_SNN_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
