"""The one switch between fast paths and the readable reference code.

Every module that has a fast path (``LIF``, ``BayesLinear``, the MESU/BGD optimizers) checks
:func:`fast_paths_enabled` when it runs; ``with fast_paths(False):`` makes all of them run the
reference code of :mod:`mesu_snn.functional` (for comparisons, debugging, and double
backward, e.g. Hessian-vector products). Nothing else changes the choice.
"""
from __future__ import annotations

from contextlib import contextmanager

__all__ = ["fast_paths", "fast_paths_enabled"]

_ENABLED = [True]


def fast_paths_enabled() -> bool:
    """Whether modules use their fast paths (default True)."""
    return _ENABLED[0]


@contextmanager
def fast_paths(enabled: bool = True):
    """``with fast_paths(False):`` runs the reference code everywhere; restores the previous
    setting on exit."""
    saved = _ENABLED[0]
    _ENABLED[0] = bool(enabled)
    try:
        yield
    finally:
        _ENABLED[0] = saved
