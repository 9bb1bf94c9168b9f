"""The one switch between fast paths and the readable reference code.

Every module that has a fast path (``LIF``, ``BayesLinear``, the MESU/BGD optimizers) checks
:func:`fast_paths_enabled` when it runs; ``with fast_paths(False):`` makes all of them run the
reference code of :mod:`mesu_snn.functional` (for comparisons, debugging, and double
backward, e.g. Hessian-vector products). Nothing else changes the choice.

The optional compiled loops of :mod:`mesu_snn.kernels.native` are one more fast path under the
same switch: ``with fast_paths(native=False):`` keeps the other fast paths and runs their pure-
PyTorch code instead of the compiled loops (:func:`native_enabled` is False under ``fast_paths(False)``
too).

:class:`mesu_snn.rules.StreamingStep` (a whole training step without an autograd graph, which the
trainer uses where it applies) is one more: ``with fast_paths(whole_step=False):`` makes the trainer
run the autograd step (forward, ``loss.backward()``, ``optimizer.step()``) with the other fast paths
on; :func:`whole_step_enabled` is False under ``fast_paths(False)`` too.
"""
from __future__ import annotations

from contextlib import contextmanager

__all__ = ["fast_paths", "fast_paths_enabled", "native_enabled", "whole_step_enabled"]

_ENABLED = [True]
_NATIVE = [True]
_WHOLE_STEP = [True]


def fast_paths_enabled() -> bool:
    """Whether modules use their fast paths (default True)."""
    return _ENABLED[0]


def native_enabled() -> bool:
    """Whether fast paths may use the compiled loops (default True; they are used only where the
    library could be built, see :mod:`mesu_snn.kernels.native`)."""
    return _ENABLED[0] and _NATIVE[0]


def whole_step_enabled() -> bool:
    """Whether the trainer may run its hand-written whole step (:class:`mesu_snn.rules.StreamingStep`;
    default True)."""
    return _ENABLED[0] and _WHOLE_STEP[0]


_UNSET = object()


@contextmanager
def fast_paths(enabled: bool = _UNSET, native: bool | None = None, whole_step: bool | None = None):
    """``with fast_paths(False):`` runs the reference code everywhere (``fast_paths()`` or
    ``fast_paths(True)``: the fast paths); ``with fast_paths(native=False):`` switches off only their
    compiled loops and leaves the other setting as it is (``native=None`` leaves the compiled loops'
    setting as it is). ``whole_step=False`` likewise switches off only the hand-written whole training
    step. Restores the previous settings on exit."""
    saved = _ENABLED[0], _NATIVE[0], _WHOLE_STEP[0]
    if enabled is _UNSET:
        enabled = True if (native is None and whole_step is None) else _ENABLED[0]
    _ENABLED[0] = bool(enabled)
    if native is not None:
        _NATIVE[0] = bool(native)
    if whole_step is not None:
        _WHOLE_STEP[0] = bool(whole_step)
    try:
        yield
    finally:
        _ENABLED[0], _NATIVE[0], _WHOLE_STEP[0] = saved
