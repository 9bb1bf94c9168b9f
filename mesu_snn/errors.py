"""The package's error classes (bottom layer: imports nothing of mesu_snn).

* :class:`MesuError`: base of every error mesu_snn raises on purpose.
* :class:`MissingExtraError`: a feature needs an optional package that is not installed; the
  message names the ``pip install 'mesu-snn[EXTRA]'`` that brings it.
* :class:`CLIError`: a user error the command line reports as one line, without a traceback.
* :class:`FileFormatError`: a file we read is corrupt or not what it claims to be; names the file.
* :class:`DiskFullError`: a write failed for lack of space (also an OSError); names the path.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MesuError", "MissingExtraError", "CLIError", "FileFormatError", "DiskFullError", "require"]


class MesuError(Exception):
    """Base of the errors mesu_snn raises on purpose."""


class MissingExtraError(MesuError, ImportError):
    """An optional dependency is missing; the message says which extra installs it."""


class CLIError(MesuError):
    """A user error to report as one line ``mesu-snn: error: ...``, without a traceback."""


#: Optional packages -> the extra of ``pyproject.toml`` that installs them.
EXTRAS = {"tonic": "events", "snntorch": "interop", "norse": "interop", "nirtorch": "interop"}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (an optional dependency) for ``feature``, or raise
    :class:`MissingExtraError` naming the extra to install."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if getattr(e, "name", None) not in (top, module) and not str(e).startswith(f"No module named '{top}"):
            raise
        extra = EXTRAS.get(top)
        hint = f"pip install 'mesu-snn[{extra}]'" if extra else f"pip install {top}"
        raise MissingExtraError(f"{feature} needs the optional package '{top}', which is not installed: "
                                f"{hint}") from None


class FileFormatError(MesuError, ValueError):
    """A file we read is corrupt, truncated, of another format, declares more data than it can
    hold, or fails its checksum; the message names the file (also a ValueError)."""


class DiskFullError(MesuError, OSError):
    """A write failed because the disk (or quota) is full; the message names the path. Files
    written before stay intact (every run file is written to a temporary file and renamed)."""
