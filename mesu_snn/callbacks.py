"""Training callbacks: how the trainer tells observers (σ recorder, logger, checkpointer)
what happened. The learner never sees task boundaries; callbacks do (``on_task_end``).

Every method is a no-op by default; subclass and override what you need.
"""
from __future__ import annotations

import torch.nn as nn
import torch.optim


class Callback:
    """Observer of a training run."""

    def on_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict) -> None:
        """Before the first update; ``config`` is the run's configuration (a plain dict)."""

    def on_update(self, update: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After optimizer step number ``update`` (counting from 1)."""

    def on_task_end(self, task_index: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After the last update on task ``task_index`` (0-based), before its evaluation."""

    def on_end(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After the last update and evaluation; flush and close here."""
