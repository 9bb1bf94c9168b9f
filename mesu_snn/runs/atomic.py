"""Safe file writes, the one home for them: write to a temporary file beside the target, flush,
fsync, and rename it into place, so a crash never leaves half a file. :func:`atomic_path`
also refuses to overwrite an existing output unless ``force``.

Disk full: a write that fails for lack of space (ENOSPC/EDQUOT, also when HDF5 reports it)
raises :class:`mesu_snn.errors.DiskFullError` naming the path; the temporary file is removed
and the previous file at the path stays as it was.

Temporary files are named ``.<target name>.<random>.tmp``; :func:`remove_stale_temps` deletes
those a killed process left behind (``mesu-snn train --resume`` calls it).

Kill testing: with ``MESU_SNN_CRASH_AT=N`` in the environment the process SIGKILLs itself at
the N-th :func:`crash_point` it passes (before, in the middle of and after every atomic write,
and inside the σ-trace writer); ``MESU_SNN_CRASH_LOG=FILE`` appends the label of every point
passed to FILE. Both unset (the normal case): :func:`crash_point` does nothing.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import DiskFullError

__all__ = ["atomic_path", "check_writable", "atomic_write_bytes", "atomic_write_text", "atomic_write_with",
           "remove_stale_temps", "is_disk_full", "disk_full_error", "check_free_space", "crash_point"]

_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}

# ----------------------------------------------------------------- kill-test hook
_CRASH_AT = int(os.environ.get("MESU_SNN_CRASH_AT", "0") or 0)
_CRASH_LOG = os.environ.get("MESU_SNN_CRASH_LOG") or None
_crash_count = 0


def crash_point(label: str) -> None:
    """A place where the kill harness may SIGKILL this process (see the module docstring)."""
    global _crash_count
    if not (_CRASH_AT or _CRASH_LOG):
        return
    _crash_count += 1
    if _CRASH_LOG:
        with open(_CRASH_LOG, "a") as f:
            f.write(f"{_crash_count}\t{label}\n")
    if _crash_count == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------- disk full
def is_disk_full(e: BaseException) -> bool:
    """True if ``e`` reports a lack of space (OSError errno, or the text HDF5 puts in its errors)."""
    if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
        return True
    text = str(e)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text


def disk_full_error(path, e: BaseException | None = None, need: int | None = None) -> DiskFullError:
    """The one error for a write to ``path`` that failed for lack of space."""
    path = Path(path)
    try:
        free = f"{os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize} bytes free"
    except OSError:
        free = "free space unknown"
    want = f", about {need} bytes needed" if need else ""
    err = DiskFullError(errno.ENOSPC, f"disk full: no space left on device to write {path} ({free}{want}); the previous "
                        "version of the file is intact; free some space and run again (mesu-snn train --resume "
                        "continues a run)")
    err.path = path
    return err


def check_free_space(path, need: int) -> None:
    """DiskFullError naming ``path`` if its folder's file system has fewer than ``need`` bytes free."""
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return
    if st.f_bavail * st.f_frsize < need:
        raise disk_full_error(path, need=need)


# ----------------------------------------------------------------- atomic writes
def check_writable(path, force: bool = False) -> Path:
    """``path`` as a Path; FileExistsError if it exists and not ``force``; FileNotFoundError if
    its folder does not exist."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; overwrite it with --force")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} for output {path.name} does not exist")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_with(path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` writes the whole file to ``tmp`` (a fresh path beside ``path``); then it is
    fsynced and renamed to ``path``. On any error the temporary file is removed and ``path`` is
    untouched; a lack of space is raised as DiskFullError naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        crash_point(f"before_write:{path.name}")
        write(tmp)
        crash_point(f"after_write:{path.name}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        crash_point(f"after_rename:{path.name}")
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp.exists():
            tmp.unlink()
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise disk_full_error(path, e) from None
        raise
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
        try:
            yield tmp
        except BaseException as e:
            if is_disk_full(e) and not isinstance(e, DiskFullError):
                raise disk_full_error(path, e) from None
            raise
        crash_point(f"after_write:{path.name}")
        if path.exists() and not force:  # appeared meanwhile
            raise FileExistsError(f"{path} already exists; overwrite it with --force")
        os.chmod(tmp, 0o666 & ~_umask())          # like any new file (mkstemp makes it 0600)
        os.replace(tmp, path)
        crash_point(f"after_rename:{path.name}")
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            crash_point(f"mid_write:{Path(path).name}")
            f.write(data[half:])
            f.flush()
    atomic_write_with(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def remove_stale_temps(*folders, target: str | None = None) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that a killed writer left in
    ``folders`` (with ``target``: only those of the file named ``target``); return them. Only
    call it while no other process writes there."""
    gone = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_file() and _TEMP.match(p.name) and (target is None or p.name.startswith(f".{target}.")
                                                       and p.name.count(".") == target.count(".") + 3):
                p.unlink()
                gone.append(p)
    return gone
