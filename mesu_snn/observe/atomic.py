"""Safe file writes: never overwrite an existing output unless ``force``; write to a temporary
file beside the target and rename it into place, so a crash never leaves half a file."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "check_writable"]


def check_writable(path, force: bool = False) -> Path:
    """``path`` as a Path; FileExistsError if it exists and not ``force``; FileNotFoundError if
    its folder does not exist."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass --force (force=True) to overwrite it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} for output {path.name} does not exist")
    return path


@contextmanager
def atomic_path(path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``path``.

    On error the temporary file is removed and ``path`` is left untouched."""
    path = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.exists() and not force:  # appeared meanwhile
            raise FileExistsError(f"{path} already exists; pass --force (force=True) to overwrite it")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
