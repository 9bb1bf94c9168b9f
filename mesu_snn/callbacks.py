"""Training callbacks: how the trainer tells observers (σ recorder, progress bar, the run-file
writers of :mod:`mesu_snn.runs`) what happened. The learner never sees task boundaries;
callbacks do (``on_task_end``).

Every method is a no-op by default; subclass and override what you need. Order of the calls
in :meth:`mesu_snn.Trainer.fit`::

    on_resume (only with resume=True, until one returns True) → on_fit_start →
    on_start → [on_update → on_task_end* → on_step] per update → on_fit_exit (always, also
    after an error) → on_finish → on_end

A callback that buffers what it writes may define ``flush()``: the checkpointer
(:class:`mesu_snn.runs.Checkpointer`) calls it on every callback before each checkpoint, so
the files cover at least the checkpoint's updates and a resumed run misses nothing.
"""
from __future__ import annotations

import sys

import torch.nn as nn
import torch.optim

__all__ = ["Callback", "Progress"]


class Callback:
    """Observer of a training run."""

    # -- model-level hooks (the σ recorder needs only these) -------------------------------
    def on_start(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict) -> None:
        """Before the first update; ``config`` is the run's configuration (a plain dict) plus
        ``resumed`` and ``start_update``."""

    def on_update(self, update: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After optimizer step number ``update`` (counting from 1)."""

    def on_task_end(self, task_index: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After the last update on task ``task_index`` (0-based), before its evaluation."""

    def on_end(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After the last update and evaluation; flush and close here."""

    # -- trainer-level hooks (logging, checkpoints, metrics files, progress) -----------------
    def on_resume(self, trainer) -> bool:
        """``fit(resume=True)``: restore ``trainer`` (``trainer.load_state_dict``) from a saved
        state and return True, or return False if there is none."""
        return False

    def on_fit_start(self, trainer) -> None:
        """After any resume, before the first update (also for a run that had finished)."""

    def on_step(self, trainer, row: dict) -> None:
        """After update ``trainer.update`` with its log row (already in ``trainer.log_rows``)."""

    def on_fit_exit(self, trainer) -> None:
        """When the loop ends, normally or by an exception: release files here."""

    def on_finish(self, trainer, metrics: dict, timing: dict | None) -> None:
        """After the last update: the final metrics (``timing`` None for a run that had finished)."""


class Progress(Callback):
    """A tqdm progress bar with live task, training accuracy and last evaluated accuracy.
    When stdout is not a terminal it prints one line per task instead of ``\\r`` updates."""

    def __init__(self, desc: str | None = None, every: int = 5, stream=None):
        self.desc, self.every = desc, every
        self.stream = stream if stream is not None else sys.stderr
        self._bar = None

    def on_fit_start(self, trainer) -> None:
        from tqdm import tqdm
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = tqdm(total=trainer.n_updates, initial=trainer.update, desc=self.desc or trainer.desc,
                         unit="upd", dynamic_ncols=True, leave=True, file=self.stream, disable=not self._tty)

    def on_step(self, trainer, row: dict) -> None:
        u = trainer.update
        self._bar.update(1)
        ended = row["eval_avg_acc"] != "" and u in trainer.ends_at
        if self._tty and (u % self.every == 0 or row["eval_avg_acc"] != ""):
            post = {"task": f"{row['task'] + 1}/{trainer.n_tasks}", "train_acc": f"{trainer.train_acc_ema:.3f}"}
            last = trainer.last_evaluation()
            if last is not None:
                post["avg_acc"] = f"{last:.3f}"
            self._bar.set_postfix(post, refresh=False)
        elif not self._tty and ended:
            tasks = ", ".join(str(k + 1) for k in trainer.ends_at[u])
            print(f"{self.desc or trainer.desc}: task {tasks}/{trainer.n_tasks} done at update {u}/{trainer.n_updates}, "
                  f"average accuracy over the tasks seen {float(row['eval_avg_acc']):.3f}", file=self.stream, flush=True)

    def on_fit_exit(self, trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
