"""The package's error classes (bottom layer: imports nothing of mesu_snn).

* :class:`MesuError`: base of every error mesu_snn raises on purpose.
* :class:`MissingExtraError`: a feature needs an optional package that is not installed; the
  message names the ``pip install 'mesu-snn[EXTRA]'`` that brings it.
* :class:`CLIError`: a user error the command line reports as one line, without a traceback.
* :class:`FileFormatError`: a file we read is corrupt or not what it claims to be; names the file.
* :class:`DiskFullError`: a write failed for lack of space (also an OSError); names the path.
* :class:`ChipConstraintError`: a network does not fit a neuromorphic target (also a
  ValueError); the message lists every violation found, one per line.
* :class:`NonFiniteStepError`: an optimizer step refused because it would make a μ or σ
  non-finite or a σ ≤ 0 (also a FloatingPointError); names the parameter.
* :class:`DivergedError`: a training run diverged (a CLIError: one line); names the reason.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MesuError", "MissingExtraError", "CLIError", "FileFormatError", "DiskFullError", "ChipConstraintError",
           "NonFiniteStepError", "DivergedError", "require"]


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


class ChipConstraintError(MesuError, ValueError):
    """A network breaks the constraints of a neuromorphic target or file format. ``violations``
    holds every problem found (the message lists them all, one per line), so one run of the
    check tells the user everything to change; nothing is written."""

    def __init__(self, target: str, violations):
        self.target, self.violations = target, list(violations)
        lines = "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(f"the network does not fit {target} ({len(self.violations)} violation"
                         f"{'s' if len(self.violations) != 1 else ''}):\n{lines}")
class NonFiniteStepError(MesuError, FloatingPointError):
    """An optimizer step was refused before it changed anything: its gradients, or the μ/σ it
    would write, are non-finite, or a σ would be ≤ 0. The message names the parameter."""


class DivergedError(CLIError):
    """A training run diverged (accuracy at chance, a non-finite or absurd parameter); the
    message gives the reason and says which checkpoint was kept."""
