"""Atomic checkpoints: everything a run needs to continue bit-exactly.

A checkpoint is one ``torch.save`` file that holds only tensors and plain Python types (dict,
list, tuple, str, int, float, bool, None), so it is read with ``torch.load(weights_only=True)``:
loading a checkpoint from someone else never runs code (a pickle that names any other class
or function is refused). Layout (version 2)::

    {"format": "mesu_snn.checkpoint", "version": 2, "sha256": <hex of the payload bytes>,
     "payload": uint8 tensor = torch.save(<the payload dict>)}

The SHA-256 is verified before the payload is read, so a flipped bit is an error naming the
file, never a silently different model. :func:`save_checkpoint` writes to a temporary file in
the same folder, flushes and fsyncs it, then renames it into place (``os.replace``), so a run
killed at any moment leaves either the previous checkpoint or the new one, never a torn
file. Contents written by the trainer:

``model`` (state_dict), ``rule`` (optimizer state_dict + importances/anchors), ``rng``
(:func:`mesu_snn.seeding.capture_rng`: torch CPU (+CUDA), numpy, python ``random``, and the trainer's own
generators: Monte-Carlo weight noise, encoder), ``position`` (updates done = batches of the
task-free stream consumed), ``state`` (accuracy matrix rows, history, log rows so far).
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import FileFormatError
from .atomic import atomic_write_bytes

__all__ = ["save_checkpoint", "load_checkpoint", "check_bayes_state", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 2
FORMAT = "mesu_snn.checkpoint"


def _to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _safe_load(data: bytes):
    """``torch.load(weights_only=True)``: tensors and plain types only, never code."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (tensors and plain types only) with its SHA-256 to ``path``."""
    data = _to_bytes(dict(payload))
    try:
        _safe_load(data)
    except Exception as e:  # something in the payload that a safe reader would refuse
        raise TypeError(f"checkpoint payload for {path} holds a non-plain object ({e}); only tensors, "
                        "dict, list, tuple, str, int, float, bool and None may go into a checkpoint") from None
    outer = {"format": FORMAT, "version": CHECKPOINT_VERSION, "sha256": hashlib.sha256(data).hexdigest(),
             "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    atomic_write_bytes(path, _to_bytes(outer))
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (on CPU), safely: nothing in the file
    can run code, and the payload's SHA-256 must match. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        outer = _safe_load(path.read_bytes())
    except Exception as e:  # a truncated or foreign file, or a pickle that wants code
        why = ("it holds objects other than tensors and plain types, which could run code"
               if "Weights only load failed" in str(e) else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
        raise FileFormatError(f"{path}: not a readable mesu_snn checkpoint; it was refused by the safe "
                         f"(weights-only) reader ({why})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise FileFormatError(f"{path}: not a mesu_snn checkpoint (no format tag {FORMAT!r}); checkpoints "
                         "written before version 2 cannot be loaded safely: re-run the training")
    if outer.get("version") != CHECKPOINT_VERSION:
        raise FileFormatError(f"{path}: checkpoint version {outer.get('version')!r}, this mesu_snn reads "
                         f"version {CHECKPOINT_VERSION}")
    data = outer.get("payload")
    if not (isinstance(data, torch.Tensor) and data.dtype == torch.uint8 and data.dim() == 1):
        raise FileFormatError(f"{path}: checkpoint payload is missing or malformed")
    data = data.numpy().tobytes()
    if not isinstance(outer.get("sha256"), str) or hashlib.sha256(data).hexdigest() != outer["sha256"]:
        raise FileFormatError(f"{path}: checksum mismatch: the checkpoint is corrupt (a changed byte); "
                         "it is not loaded")
    try:
        ckpt = _safe_load(data)
    except Exception as e:
        raise FileFormatError(f"{path}: unreadable checkpoint payload ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict):
        raise FileFormatError(f"{path}: checkpoint payload is not a dict")
    if isinstance(ckpt.get("model"), dict):
        check_bayes_state(ckpt["model"], path)
    return ckpt


def check_bayes_state(state: dict, source) -> None:
    """Every ``*_sigma`` tensor finite and > 0, every other floating tensor (``*_mu``, neuron
    parameters) finite; else FileFormatError (a ValueError) naming ``source`` and the tensor."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and k.endswith(("_mu", "_sigma")) and not torch.is_floating_point(v):
            raise FileFormatError(f"{source}: {k} is a {v.dtype} tensor; μ and σ are floating point")
        if not isinstance(v, torch.Tensor) or not torch.is_floating_point(v):
            continue
        if k.endswith("_sigma"):
            bad = ~torch.isfinite(v) | (v <= 0)
            if bool(bad.any()):
                raise FileFormatError(f"{source}: {k} has {int(bad.sum())} entries that are not finite and > 0 "
                                      "(a σ must be positive); the file is corrupt or the run diverged")
        elif not bool(torch.isfinite(v).all()):
            what = "NaN/Inf μ" if k.endswith("_mu") else "NaN/Inf"
            raise FileFormatError(f"{source}: {k} has {int((~torch.isfinite(v)).sum())} non-finite entries "
                                  f"({what}); the file is corrupt or the run diverged")
