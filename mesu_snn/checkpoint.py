"""Atomic checkpoints: everything a run needs to continue bit-exactly.

A checkpoint is one ``torch.save`` file holding a plain dict; :func:`save_checkpoint` writes
it to a temporary file in the same folder, flushes and fsyncs it, then renames it into place
(``os.replace``), so a run killed at any moment leaves either the previous checkpoint or the
new one, never a torn file. Contents written by the trainer:

``model`` (state_dict), ``rule`` (optimizer state_dict + importances/anchors), ``rng``
(:func:`capture_rng`: torch CPU (+CUDA), numpy, python ``random``, and the trainer's own
generators: Monte-Carlo weight noise, encoder), ``position`` (updates done = batches of the
task-free stream consumed), ``state`` (accuracy matrix rows, history, log rows so far).
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "atomic_write_bytes",
           "atomic_write_text", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


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


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict:
    """States of torch (CPU and every CUDA device), numpy, python ``random`` and ``generators``."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "generators": {k: g.get_state() for k, g in (generators or {}).items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng`; every name in ``generators`` must be in the state."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for k, g in (generators or {}).items():
        if k not in saved:
            raise ValueError(f"checkpoint has no state for the generator {k!r}")
        g.set_state(saved[k])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (plus a version tag) to ``path``; returns the path."""
    import io
    buf = io.BytesIO()
    torch.save(dict(payload, version=CHECKPOINT_VERSION), buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (on CPU). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a mesu_snn checkpoint of version {CHECKPOINT_VERSION}")
    return ckpt
