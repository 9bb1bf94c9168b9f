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

import math
import sys
import warnings

import torch.nn as nn
import torch.optim

from .synapses import bayesian_pairs

__all__ = ["Callback", "Progress", "SigmaWatch", "SigmaCollapseWarning"]


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


class SigmaCollapseWarning(UserWarning):
    """A layer's σ is so small early in training that it may hardly learn."""


class SigmaWatch(Callback):
    """Warn, once per weight layer, when its σ collapses early: within the first ``within``
    updates the layer's median σ falls below ``fraction`` of its median at the start, or its
    median relative σ, σ·√fan_in (what ``sigma_init`` sets: σ₀ = sigma_init/√fan_in), is at most
    ``floor``. MESU's and BGD's μ step scales with σ², so such a layer hardly moves (permuted
    digits, 2 tasks: learning accuracy 0.83 with sigma_init 0.5, 0.29 with 0.1, 0.12 with 0.05).
    Checked every ``every`` updates (a median per layer); :func:`mesu_snn.build.build_trainer`
    attaches it for Bayesian rules."""

    def __init__(self, fraction: float = 0.1, floor: float = 0.1, within: int = 500, every: int = 10):
        self.fraction, self.floor, self.within, self.every = fraction, floor, within, every
        self._start: dict[str, float] = {}
        self._warned: set[str] = set()

    @staticmethod
    def _medians(model: nn.Module) -> dict[str, tuple[float, int]]:
        out = {}
        for name, _, sigma in bayesian_pairs(model):
            if sigma.dim() >= 2:                       # weights (biases have no fan-in)
                out[name] = (float(sigma.detach().median()), math.prod(sigma.shape[1:]))
        return out

    def on_start(self, model, optimizer, config) -> None:
        self._warned = set()
        self._active = int(config.get("start_update", 0) or 0) < self.within
        self._start = {n: m for n, (m, _) in self._medians(model).items()} if self._active else {}
        if self._active:
            self._check(0, model)

    def on_update(self, update, model, optimizer) -> None:
        if self._active and update <= self.within and update % self.every == 0:
            self._check(update, model)

    def _check(self, update: int, model: nn.Module) -> None:
        for name, (med, fan_in) in self._medians(model).items():
            if name in self._warned or name not in self._start:
                continue
            start, rel = self._start[name], med * math.sqrt(fan_in)
            if med < self.fraction * start:
                what = f"fell to {med:.3g} by update {update}, {med / start:.1%} of its {start:.3g} at the start"
            elif rel <= self.floor * (1 + 1e-6):
                what = f"is {med:.3g} at update {update}: σ·√fan_in = {rel:.3g} (fan_in {fan_in})"
            else:
                continue
            self._warned.add(name)
            warnings.warn(f"σ collapsed early in {name}: its median σ {what}; its μ then barely learns "
                          f"(the step scales with σ²). sigma_init is scaled by 1/√fan_in (σ₀ = sigma_init/√fan_in): "
                          f"raise model.sigma_init (default 0.5), or for MESU its memory or sigma_prior",
                          SigmaCollapseWarning, stacklevel=2)
