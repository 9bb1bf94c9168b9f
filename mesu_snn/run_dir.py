"""Run directories: create one, refuse to overwrite an existing one without ``force``.

Layout (written by ``mesu-snn train`` / ``demo`` and the trainer)::

    DIR/.mesu-run            marker: this folder is a mesu-snn run directory
    DIR/config.toml          the validated configuration
    DIR/metrics.json         accuracy matrix and every metric (written at the end)
    DIR/log.csv              one row per update (loss, accuracy, evaluations)
    DIR/*.png                plots (accuracy matrix, accuracy of each task over time, ...)
    DIR/checkpoints/last.pt  atomic checkpoint every K updates (and at the end)
"""
from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["MARKER", "create_run_dir", "is_run_dir"]

MARKER = ".mesu-run"


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def create_run_dir(path: str | Path, force: bool = False, resume: bool = False) -> Path:
    """Make ``path`` ready for a run and return it.

    * missing or empty folder: created;
    * ``resume``: must be an existing run directory; kept as it is;
    * existing, non-empty: ``FileExistsError`` unless ``force``; with ``force`` its contents
      are deleted, but only if it is a run directory (has the ``.mesu-run`` marker), so
      ``--force`` never wipes an unrelated folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"run directory {path} exists and is not a folder")
    if resume:
        if not is_run_dir(path):
            raise FileNotFoundError(f"cannot resume: {path} is not a mesu-snn run directory (no {MARKER})")
        return path
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise FileExistsError(f"run directory {path} already exists and is not empty; pass --force to "
                                  "overwrite it, --resume to continue it, or choose another --out")
        if not is_run_dir(path):
            raise FileExistsError(f"refusing to --force {path}: it is not a mesu-snn run directory (no {MARKER} "
                                  "marker); delete it yourself or choose another --out")
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("mesu-snn run directory\n")
    return path
