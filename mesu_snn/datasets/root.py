"""Data-root resolution shared by every dataset reader."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MESU_SNN_DATA"
DEFAULT_ROOT = "data"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Folder that holds the datasets.

    Order: the explicit ``data_root`` argument, else the environment variable
    ``MESU_SNN_DATA`` (if set and non-empty), else ``data/`` relative to the
    current working directory. ``~`` is expanded; the folder need not exist.
    """
    if data_root is not None:
        if isinstance(data_root, str) and not data_root.strip():
            raise ValueError("data_root is an empty string; pass a folder or None")
        return Path(data_root).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_ROOT)
