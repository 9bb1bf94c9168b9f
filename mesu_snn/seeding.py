"""Seeding, the one home for it: seeds derived from a run seed and tags, generators, and the
capture/restore of every random state a run uses (for bit-exact resume).

The states are plain types and tensors only, so checkpoints holding them load with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

__all__ = ["derive_seed", "generator", "capture_rng", "restore_rng"]


def derive_seed(seed: int, *tags) -> int:
    """A 63-bit seed from ``seed`` and tags (stable across runs and platforms)."""
    h = hashlib.sha256(":".join(map(str, (seed, *tags))).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict:
    """States of torch (CPU and every CUDA device), numpy, python ``random`` and ``generators``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                   float(cached))                       # plain types + a tensor: loads with weights_only=True
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate(),
             "generators": {k: g.get_state() for k, g in (generators or {}).items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng`; every name in ``generators`` must be in the state."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for k, g in (generators or {}).items():
        if k not in saved:
            raise ValueError(f"checkpoint has no state for the generator {k!r}")
        g.set_state(saved[k])
