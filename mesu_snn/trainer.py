"""The continual-learning loop: one trainer for every rule.

For every mini-batch of a *task-free* stream (plain ``(x, y)``, no task index)::

    x = encode(x_raw)                                  # (T, B, ...)
    out = model(x, samples=M, generator=noise)         # (M, B, C); M = 1 for mean-mode rules
    loss = rule.loss(out, y)                           # NLL (+ EWC/SI penalty)
    rule.zero_grad(); loss.backward(); rule.step()

An online rule (``rule.online``: ``mesu_online``, ``sgd_online``) computes its gradient forward
in time with eligibility traces instead: ``loss, out = rule.train_step(x, y, M, noise)``.
Where :class:`~mesu_snn.rules.StreamingStep` covers the model and rule (a SpikingMLP or BayesMLP
trained by MESU or BGD on the CPU, see :func:`~mesu_snn.rules.unsupported_reason`), the forward
and backward run as its hand-written step without an autograd graph: the same draws and the same
gradients to rounding, then the same ``rule.step()``; ``with fast_paths(whole_step=False):`` forces
the autograd step.

The learner never sees task boundaries. The trainer knows them (from the stream's schedule)
only to evaluate: after the last batch of task i it measures the held-out accuracy on every
task seen so far, which fills row i of the accuracy matrix R; optionally also every
``eval_every`` updates (the accuracy-over-time curves). Online EWC and SI are the exception
by design: ``rule.end_task`` is called for them at each boundary (``rule.uses_task_boundaries``).

Determinism. All randomness flows from ``seed``: the Monte-Carlo weight noise and the
encoder have their own ``torch.Generator``; each evaluation uses a fresh generator derived
from (seed, update), so evaluating never perturbs training. A checkpoint holds the model, the
rule's state, every RNG state (torch, numpy, python, both generators), the stream position
and the metrics so far, so a run killed at any moment and resumed ends with exactly the same
μ, σ and metrics on CPU as an uninterrupted run.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import metrics as M
from .callbacks import Callback
from .evaluation import EVAL_MASKS, Evaluation, Evaluator
from .models import model_spec
from .bounds import check_number
from .errors import NonFiniteStepError
from .rules.rule import Rule
from .rules.streaming_step import whole_step_for
from .synapses import bayesian_pairs
from .seeding import capture_rng, derive_seed, generator, restore_rng
from .streams import TaskStream

__all__ = ["Trainer", "EVAL_MASKS"]





class Trainer:
    """Train ``model`` with ``rule`` on ``tasks`` presented task-free, and evaluate.

    model: a network with mesu_snn Bayesian layers, ``model(x, samples=M, generator=g)`` ->
        (M, B, C). rule: a :class:`~mesu_snn.rules.Rule` built for that model.
    tasks: a :class:`~mesu_snn.streams.TaskStream` (train and test sets of every task).
    encode: ``encode(x_raw, generator) -> (T, B, ...)`` float tensor, the model's input, for a
        raw batch (tensor (B, ...) or list of event arrays). If ``encode.deterministic`` is
        true, encoded test batches are cached.
    batch_size, epochs_per_task, boundary, transition, stream_seed: the task-free stream
        (:meth:`TaskStream.task_free`).
    train_samples: M per update for Bayesian rules (mean-mode rules use 1).
    eval_samples: M at evaluation (Bayesian model average) for Bayesian rules.
    eval_every: also evaluate every K updates (0: only after each task).
    eval_average: how the M samples are combined for the accuracy: ``"probs"`` (default, the
        Bayesian model average: argmax of the mean softmax) or ``"log_probs"`` (argmax of the
        mean log-softmax, the MESU authors' evaluation).
    eval_mask: None (single head over all classes) or ``"task"``: at evaluation only, the
        prediction on task j is the argmax over task j's classes (task-incremental scoring).
        The uncertainty metrics (entropies, ECE, OOD AUROC) always use the single-head
        prediction over all classes.
    ood_inputs: raw inputs never trained on (e.g. a fresh pixel permutation); gives OOD AUROC.
    chance_patience: K; the run *diverges* when the accuracy on the task just learned is at chance
        (within max(0.05, 3 binomial standard errors) of 1/classes) at K task ends in a row
        (fewer if the stream has fewer tasks; 0: never on accuracy alone).
    max_abs_parameter: a μ or σ above this in magnitude (or non-finite, or a σ <= 0) is a
        diverged run; checked at every evaluation and before every checkpoint.
    Divergence (those two, a non-finite loss, or a step the rule refused as non-finite): the
    trainer stops updating; the remaining updates of the stream are skipped (their log rows
    have no loss), the task-end evaluations still run, so the metrics are complete and say
    ``"diverged": true`` with ``"diverged_reason"`` and ``"diverged_at_update"``. The
    checkpointer (:class:`mesu_snn.runs.Checkpointer`) writes no checkpoint after it, so the
    last one on disk is the last good state.
    callbacks: observers (:class:`~mesu_snn.callbacks.Callback`): the σ recorder, the progress
        bar, and the run-file writers of :mod:`mesu_snn.runs` (log, checkpoints, metrics). The
        trainer itself writes no file.
    """

    def __init__(self, model: nn.Module, rule: Rule, tasks: TaskStream, encode: Callable, *,
                 batch_size: int = 16, epochs_per_task: int = 1, boundary: str = "sharp", transition: float = 0.2,
                 stream_seed: int = 0, train_samples: int = 4, eval_samples: int = 8, eval_every: int = 0,
                 eval_batch_size: int = 256, eval_mask: str | None = None, eval_average: str = "probs",
                 seed: int = 0, last_k: int = 3, chance_patience: int = 3, max_abs_parameter: float = 1e4,
                 ood_inputs=None, ood_description: str = "inputs never trained on",
                 callbacks: Iterable[Callback] = (), desc: str | None = None,
                 device: str | torch.device = "cpu", config: dict | None = None):
        for name, v, lo in (("train_samples", train_samples, 1), ("eval_samples", eval_samples, 1),
                            ("eval_every", eval_every, 0), ("eval_batch_size", eval_batch_size, 1),
                            ("last_k", last_k, 1), ("chance_patience", chance_patience, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        check_number("max_abs_parameter", max_abs_parameter, ">0")
        if eval_mask not in EVAL_MASKS:
            raise ValueError(f"eval_mask must be None or 'task', got {eval_mask!r}")
        if not isinstance(rule, Rule):
            raise ValueError(f"rule must be a mesu_snn Rule (see make_rule), got {type(rule).__name__}")
        if rule.model is not model:
            raise ValueError("the rule was built for a different model")
        self.model, self.rule, self.tasks, self.encode = model, rule, tasks, encode
        self.stream = tasks.task_free(batch_size, boundary, transition, epochs_per_task, stream_seed)
        self.batch_size = int(batch_size)
        self.train_samples, self.eval_samples = train_samples, eval_samples
        self.eval_every, self.eval_batch_size, self.eval_mask = eval_every, eval_batch_size, eval_mask
        self.seed, self.last_k = int(seed), last_k
        self.chance_patience, self.max_abs_parameter = chance_patience, float(max_abs_parameter)
        self.ood_inputs = ood_inputs
        self.callbacks = list(callbacks)
        self.desc = desc or rule.name
        self.device = torch.device(device)
        self.config = dict(config or {})
        self.n_tasks = len(tasks)
        self.n_updates = len(self.stream)
        self.n_samples = int(self.stream.schedule()[0].numel())
        self._schedule()
        self._noise = generator(derive_seed(self.seed, "noise"), self.device)
        self._enc = generator(derive_seed(self.seed, "encode"), torch.device("cpu"))
        self.evaluator = Evaluator(model, tasks, encode, samples=eval_samples if rule.bayesian else 1,
                                   batch_size=eval_batch_size, mask=eval_mask, average=eval_average,
                                   seed=self.seed, device=self.device,
                                   ood_inputs=ood_inputs, ood_description=ood_description)
        self._reset_state()

    # -- schedule (evaluation only; never shown to the learner) -----------------------
    def _schedule(self) -> None:
        tids, _ = self.stream.schedule()
        b = self.batch_size
        self.batch_task = tids[torch.arange(self.n_updates) * b].tolist()  # task of each batch's first sample
        ends, firsts = [], []
        for k in range(self.n_tasks):
            pos = torch.nonzero(tids == k).flatten()
            firsts.append(int(pos[0]) // b + 1)
            ends.append(int(pos[-1]) // b + 1)
        ends = np.maximum.accumulate(np.array(ends)).tolist()
        self.task_end_update = [int(e) for e in ends]          # update after which task k is done
        self.task_first_update = firsts                       # first update that contains task k
        self.ends_at: dict[int, list[int]] = {}
        for k, u in enumerate(self.task_end_update):
            self.ends_at.setdefault(u, []).append(k)

    def _seen(self, update: int) -> list[int]:
        return [k for k in range(self.n_tasks) if self.task_first_update[k] <= update]

    def _reset_state(self) -> None:
        self.update = 0
        self.R = [[None] * self.n_tasks for _ in range(self.n_tasks)]
        self.history: list[dict] = []
        self.log_rows: list[dict] = []
        self.train_acc_ema: float | None = None
        self.final_metrics: dict | None = None
        self._diverged = False
        self.diverged_reason: str | None = None
        self.diverged_at: int | None = None
        self._at_chance = 0           # task ends in a row with the just-learned task at chance

    # -- encoding and evaluation ------------------------------------------------------------
    def _encoded(self, x_raw, generator) -> torch.Tensor:
        x = self.encode(x_raw, generator)
        return x.to(self.device, non_blocking=True)

    def _samples(self, training: bool) -> int:
        if not self.rule.bayesian:
            return 1
        return self.train_samples if training else self.eval_samples

    def evaluate(self, task_indices: Sequence[int], update: int | None = None, collect: bool = False) -> Evaluation:
        """Held-out accuracy of ``task_indices`` after ``update`` (default: now); see
        :meth:`mesu_snn.evaluation.Evaluator.evaluate`."""
        return self.evaluator.evaluate(task_indices, self.update if update is None else update, collect)

    def task_batches(self, task_index: int, n_samples: int | None = None):
        """Encoded training batches of task ``task_index`` (see :meth:`Evaluator.task_batches`)."""
        return self.evaluator.task_batches(task_index, n_samples)

    # -- state (for checkpoints) ----------------------------------------------------------
    def _generators(self) -> dict[str, torch.Generator]:
        return {"noise": self._noise, "encode": self._enc}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "model_spec": model_spec(self.model), "rule": self.rule.state_dict(),
                "rng": capture_rng(self._generators()), "position": self.update,
                "n_updates": self.n_updates, "rule_name": self.rule.name,
                "state": {"R": self.R, "history": self.history, "log_rows": self.log_rows,
                          "train_acc_ema": self.train_acc_ema, "final_metrics": self.final_metrics,
                          "diverged": self._diverged, "diverged_reason": self.diverged_reason,
                          "diverged_at": self.diverged_at, "at_chance": self._at_chance},
                "config": self.config}

    def load_state_dict(self, ckpt: dict) -> None:
        if ckpt.get("rule_name") != self.rule.name:
            raise ValueError(f"checkpoint is of rule {ckpt.get('rule_name')!r}, this run uses {self.rule.name!r}")
        if ckpt.get("n_updates") != self.n_updates:
            raise ValueError(f"checkpoint is of a stream of {ckpt.get('n_updates')} updates, this one has "
                             f"{self.n_updates}: the data or stream settings differ")
        self.model.load_state_dict(ckpt["model"])
        self.rule.load_state_dict(ckpt["rule"])
        restore_rng(ckpt["rng"], self._generators())
        st = ckpt["state"]
        self.update = int(ckpt["position"])
        self.R, self.history = st["R"], st["history"]
        # checkpoints from before the fixed-width log held one acc_task_k column per task in every
        # row (the same numbers as history): keep the fixed columns only
        self.log_rows = [{k: r.get(k, "") for k in self.LOG_FIELDS} for r in st["log_rows"]] \
            if st["log_rows"] and set(st["log_rows"][0]) != set(self.LOG_FIELDS) else st["log_rows"]
        self.train_acc_ema, self.final_metrics = st["train_acc_ema"], st["final_metrics"]
        self._diverged = bool(st.get("diverged", False))
        self.diverged_reason, self.diverged_at = st.get("diverged_reason"), st.get("diverged_at")
        self._at_chance = int(st.get("at_chance", 0))

    #: columns of the per-update log rows: as many whatever the number of tasks (the accuracy of
    #: each task lives in :attr:`history`, one entry per evaluation, see :meth:`accuracy_rows`)
    LOG_FIELDS = ("update", "samples", "task", "loss", "train_acc", "eval_avg_acc")

    def log_fields(self) -> list[str]:
        """Columns of the per-update log rows (``self.log_rows``): :data:`LOG_FIELDS`."""
        return list(self.LOG_FIELDS)

    def accuracy_fields(self) -> list[str]:
        """Columns of :meth:`accuracy_rows`: update, samples, task_end, acc_task_0 .. acc_task_{n-1}."""
        return ["update", "samples", "task_end"] + [f"acc_task_{k}" for k in range(self.n_tasks)]

    def accuracy_row(self, entry: dict) -> dict:
        """One evaluation of :attr:`history` as a CSV row (empty cells for tasks not evaluated)."""
        row = {"update": entry["update"], "samples": entry["samples"],
               "task_end": "" if entry["task_end"] is None else entry["task_end"]}
        for k, a in enumerate(entry["accuracy"]):
            row[f"acc_task_{k}"] = "" if a is None else f"{a:.4f}"
        return row

    def accuracy_rows(self) -> list[dict]:
        """The accuracy of every task at every evaluation so far, one row per evaluation
        (O(evaluations × tasks); what ``accuracy.csv`` of a run directory holds)."""
        return [self.accuracy_row(h) for h in self.history]

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Run the stream and return the metrics dict. With ``resume``, a callback that holds a
        saved state (:class:`mesu_snn.runs.Checkpointer`) restores it first and the run continues
        from there; a finished run returns its metrics."""
        self._reset_state()
        resumed = False
        if resume:
            for cb in self.callbacks:
                if cb.on_resume(self):
                    resumed = True
                    break
        for cb in self.callbacks:
            cb.on_fit_start(self)
        if self.final_metrics is not None:        # the run had finished
            for cb in self.callbacks:
                cb.on_finish(self, self.final_metrics, None)
            return self.final_metrics
        t0 = time.time()
        start = self.update
        for cb in self.callbacks:
            cb.on_start(self.model, self.rule.optimizer, dict(self.config, resumed=resumed, start_update=start))
        self.model.train()
        try:
            batches = itertools.islice(iter(self.stream), start, None)
            for u, (x_raw, y) in enumerate(batches, start=start + 1):
                self.update = u
                loss = acc = None
                if not self._diverged:
                    try:
                        loss, acc = self._train_step(x_raw, y)
                    except NonFiniteStepError as e:          # refused: nothing was written
                        self._diverge(u, str(e))
                if loss is not None:
                    if not math.isfinite(loss):
                        self._diverge(u, f"non-finite loss {loss}")
                    self.train_acc_ema = acc if self.train_acc_ema is None else 0.9 * self.train_acc_ema + 0.1 * acc
                for cb in self.callbacks:
                    cb.on_update(u, self.model, self.rule.optimizer)
                ev = self._maybe_evaluate(u)
                row = {"update": u, "samples": min(u * self.batch_size, self.n_samples),
                       "task": self.batch_task[u - 1], "loss": "" if loss is None else f"{loss:.6g}",
                       "train_acc": "" if acc is None else f"{acc:.4f}",
                       "eval_avg_acc": ""}
                if ev is not None:
                    row["eval_avg_acc"] = f"{float(np.mean(list(ev.accuracy.values()))):.4f}"
                self.log_rows.append(row)
                if u == self.n_updates:
                    self.final_metrics = self._finish(ev)
                for cb in self.callbacks:
                    cb.on_step(self, row)
        finally:
            for cb in self.callbacks:
                cb.on_fit_exit(self)
        if self.final_metrics is None:
            raise RuntimeError("the stream ended before its last update")  # pragma: no cover
        timing = {"wall_s": time.time() - t0, "updates": self.n_updates - start, "resumed_from": start}
        for cb in self.callbacks:
            cb.on_finish(self, self.final_metrics, timing)
        for cb in self.callbacks:
            cb.on_end(self.model, self.rule.optimizer)
        return self.final_metrics

    def last_evaluation(self) -> float | None:
        """Average accuracy of the latest evaluation (None before the first)."""
        return self._last_eval_avg()

    # -- divergence ---------------------------------------------------------------------------
    @property
    def diverged(self) -> bool:
        return self._diverged

    def _diverge(self, update: int, reason: str) -> None:
        if not self._diverged:
            self._diverged, self.diverged_reason, self.diverged_at = True, reason, update

    def check_parameters(self) -> bool:
        """Mark the run diverged if a parameter is non-finite, a σ <= 0, or a μ/σ larger than
        ``max_abs_parameter`` in magnitude; True if the run has diverged."""
        if self._diverged:
            return True
        sigma_ids = {id(s) for _, _, s in bayesian_pairs(self.model)}
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if p.numel() == 0:
                    continue
                lo, hi = (float(v) for v in torch.aminmax(p.detach()))
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    why = "is non-finite"
                elif id(p) in sigma_ids and lo <= 0:
                    why = f"is <= 0 (min {lo:.3g})"
                elif max(-lo, hi) > self.max_abs_parameter:
                    why = f"reached {max(-lo, hi):.3g} in magnitude (> max_abs_parameter = {self.max_abs_parameter:g})"
                else:
                    continue
                self._diverge(self.update, f"parameter {name} {why}")
                return True
        return False

    def _chance(self, k: int) -> float:
        if self.eval_mask == "task":
            return 1.0 / len(self.tasks[k].classes)
        return 1.0 / (max(self.tasks.classes) + 1)

    def _check_chance(self, ended: list[int], ev: Evaluation) -> None:
        """The just-learned task at chance at ``chance_patience`` task ends in a row: diverged."""
        if not self.chance_patience or self._diverged:
            return
        k = max(ended)
        c, n = self._chance(k), max(1, len(self.tasks[k].test_y))
        acc = ev.accuracy[k]
        band = max(0.05, 3.0 * math.sqrt(c * (1.0 - c) / n))
        self._at_chance = self._at_chance + 1 if acc <= c + band else 0
        patience = self.chance_patience
        if self._at_chance >= patience:
            self._diverge(self.update, f"accuracy at chance on the task just learned at {patience} task ends in a "
                                       f"row (task {k}: {acc:.3f}, chance {c:.3f} + {band:.3f})")

    def _train_step(self, x_raw, y: torch.Tensor) -> tuple[float, float]:
        x = self._encoded(x_raw, self._enc)
        y = y.to(self.device)
        if self.rule.online:        # eligibility traces: the rule runs the window itself, no backward
            loss, out = self.rule.train_step(x, y, samples=self._samples(True), generator=self._noise)
        else:
            whole = self._whole_step(x)
            if whole is not None:   # the hand-written step: same draws, same gradients, no autograd graph
                loss, out = whole.forward_backward(x, y, self._noise, checked=True)
                self.rule.last_batch_size = int(y.shape[0])
            else:
                out = self.model(x, samples=self._samples(True), generator=self._noise)
                loss = self.rule.loss(out, y)
                self.rule.zero_grad()
                loss.backward()
            self.rule.step()
        with torch.no_grad():
            acc = float((out.detach().softmax(-1).mean(0).argmax(-1) == y).float().mean())
        return float(loss.detach()), acc

    def _whole_step(self, x: torch.Tensor):
        """The :class:`~mesu_snn.rules.StreamingStep` for this batch, or None for the autograd step."""
        samples = self._samples(True)
        st = getattr(self, "_streaming", None)
        if st is None or (st is not False and st.samples != samples):
            st = self._streaming = whole_step_for(self.rule, samples)
        if st is False or st.supported(x) is not None:
            return None
        return st

    def _maybe_evaluate(self, u: int) -> Evaluation | None:
        ended = self.ends_at.get(u, [])
        for k in ended:
            if self.rule.uses_task_boundaries:
                n = getattr(self.rule, "fisher_samples", None)
                self.rule.end_task(k, lambda k=k, n=n: self.task_batches(k, n))
            for cb in self.callbacks:
                cb.on_task_end(k, self.model, self.rule.optimizer)
        periodic = self.eval_every and u % self.eval_every == 0
        if not ended and not periodic:
            return None
        seen = self._seen(u)
        if ended:
            seen = sorted(set(seen) | set(range(max(ended) + 1)))
        ev = self.evaluate(seen, u, collect=(u == self.n_updates))
        self.check_parameters()
        if ended:
            self._check_chance(ended, ev)
        for k in ended:
            self.R[k] = [ev.accuracy[j] if j <= k else None for j in range(self.n_tasks)]
        self.history.append({"update": u, "samples": min(u * self.batch_size, self.n_samples),
                             "task_end": ended[-1] if ended else None,
                             "accuracy": [ev.accuracy.get(j) for j in range(self.n_tasks)]})
        return ev

    def _last_eval_avg(self) -> float | None:
        if not self.history:
            return None
        accs = [a for a in self.history[-1]["accuracy"] if a is not None]
        return float(np.mean(accs)) if accs else None

    def _finish(self, ev: Evaluation | None) -> dict:
        assert ev is not None and ev.outputs is not None, "the last update always ends the last task"
        summary = M.summarize(self.R, self.last_k)
        return {
            "rule": self.rule.name,
            "rule_hyperparameters": self.rule.hyperparameters,
            "bayesian": self.rule.bayesian,
            "uses_task_boundaries": self.rule.uses_task_boundaries,
            **summary,
            "tasks": [t.name for t in self.tasks],
            "n_tasks": self.n_tasks,
            "updates": self.n_updates,
            "batch_size": self.batch_size,
            "train_samples": self._samples(True),
            "eval_samples": self._samples(False),
            "eval_mask": self.eval_mask,
            "task_end_updates": self.task_end_update,
            "uncertainty": self.evaluator.uncertainty(ev.outputs, self.n_updates),
            "accuracy_over_time": self.history,
            "skipped_steps": int(getattr(self.rule.optimizer, "skipped_steps", 0)),
            "diverged": bool(self._diverged),
            "diverged_reason": self.diverged_reason,
            "diverged_at_update": self.diverged_at,
            "seed": self.seed,
        }
