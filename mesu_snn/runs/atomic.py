"""Safe file writes, the one home for them: write to a temporary file beside the target, flush,
fsync, and rename it into place, so a crash never leaves half a file. :func:`atomic_path`
also refuses to overwrite an existing output unless ``force``."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "check_writable", "atomic_write_bytes", "atomic_write_text"]


def check_writable(path, force: bool = False) -> Path:
    """``path`` as a Path; FileExistsError if it exists and not ``force``; FileNotFoundError if
    its folder does not exist."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; overwrite it with --force")
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
            raise FileExistsError(f"{path} already exists; overwrite it with --force")
        os.chmod(tmp, 0o666 & ~_umask())          # like any new file (mkstemp makes it 0600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
