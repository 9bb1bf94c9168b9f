"""The continual-learning loop: one trainer for every rule.

For every mini-batch of a *task-free* stream (plain ``(x, y)``, no task index)::

    x = encode(x_raw)                                  # (T, B, ...)
    out = model(x, samples=M, generator=noise)         # (M, B, C); M = 1 for mean-mode rules
    loss = rule.loss(out, y)                           # NLL (+ EWC/SI penalty)
    rule.zero_grad(); loss.backward(); rule.step()

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

import csv
import hashlib
import io
import itertools
import json
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
from .checkpoint import (atomic_write_text, capture_rng, load_checkpoint, restore_rng, save_checkpoint)
from .datasets.events import EventDataset
from .rules.rule import Rule
from .streams import TaskStream

__all__ = ["Trainer", "derive_seed", "EVAL_MASKS"]

EVAL_MASKS = (None, "task")
CHECKPOINT_NAME = "last.pt"


def derive_seed(seed: int, *tags) -> int:
    """A 63-bit seed from ``seed`` and tags (stable across runs and platforms)."""
    h = hashlib.sha256(":".join(map(str, (seed, *tags))).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _take(x, idx: Sequence[int]):
    """Rows ``idx`` of raw inputs: tensor-like (N, ...) -> (B, ...), EventDataset -> list of arrays."""
    if isinstance(x, EventDataset):
        return x.get_events(list(idx))
    return x[torch.as_tensor(list(idx), dtype=torch.long)]


@dataclass
class _Eval:
    """One evaluation: accuracy per task index (and outputs when collected)."""
    accuracy: dict[int, float]
    outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None


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
    checkpoint_every: atomic checkpoint every K updates into ``run_dir/checkpoints`` (0: only
        at the end; needs ``run_dir``).
    ood_inputs: raw inputs never trained on (e.g. a fresh pixel permutation); gives OOD AUROC.
    """

    def __init__(self, model: nn.Module, rule: Rule, tasks: TaskStream, encode: Callable, *,
                 batch_size: int = 16, epochs_per_task: int = 1, boundary: str = "sharp", transition: float = 0.2,
                 stream_seed: int = 0, train_samples: int = 4, eval_samples: int = 8, eval_every: int = 0,
                 eval_batch_size: int = 256, eval_mask: str | None = None, eval_average: str = "probs",
                 checkpoint_every: int = 0,
                 run_dir: str | Path | None = None, seed: int = 0, last_k: int = 3, ood_inputs=None,
                 callbacks: Iterable[Callback] = (), progress: bool = False, desc: str | None = None,
                 device: str | torch.device = "cpu", config: dict | None = None):
        for name, v, lo in (("train_samples", train_samples, 1), ("eval_samples", eval_samples, 1),
                            ("eval_every", eval_every, 0), ("eval_batch_size", eval_batch_size, 1),
                            ("checkpoint_every", checkpoint_every, 0), ("last_k", last_k, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
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
        if eval_average not in ("probs", "log_probs"):
            raise ValueError(f"eval_average must be 'probs' or 'log_probs', got {eval_average!r}")
        self.eval_average = eval_average
        self.checkpoint_every, self.seed, self.last_k = checkpoint_every, int(seed), last_k
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.ood_inputs = ood_inputs
        self.callbacks = list(callbacks)
        self.progress, self.desc = progress, desc or rule.name
        self.device = torch.device(device)
        self.config = dict(config or {})
        self.n_tasks = len(tasks)
        self.n_updates = len(self.stream)
        self.n_samples = int(self.stream.schedule()[0].numel())
        self._schedule()
        self._noise = _generator(derive_seed(self.seed, "noise"), self.device)
        self._enc = _generator(derive_seed(self.seed, "encode"), torch.device("cpu"))
        self._eval_cache: dict = {}
        self._log_file = None
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

    # -- encoding -------------------------------------------------------------------------
    def _encoded(self, x_raw, generator) -> torch.Tensor:
        x = self.encode(x_raw, generator)
        return x.to(self.device, non_blocking=True)

    def _test_batches(self, task_index: int, generator):
        task = self.tasks[task_index]
        n = len(task.test_y)
        cache = bool(getattr(self.encode, "deterministic", False))
        for s in range(0, n, self.eval_batch_size):
            idx = range(s, min(s + self.eval_batch_size, n))
            key = (task_index, s)
            if cache and key in self._eval_cache:
                x = self._eval_cache[key]
            else:
                x = self._encoded(_take(task.test_x, idx), generator)
                if cache:
                    self._eval_cache[key] = x
            yield x, task.test_y[s:s + len(idx)].to(self.device)

    def task_batches(self, task_index: int, n_samples: int | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Encoded training batches of task ``task_index`` (first ``n_samples``, in order), for
        rules that use boundaries (EWC's Fisher). Deterministic in (seed, task)."""
        task = self.tasks[task_index]
        n = len(task.train_y) if n_samples is None else min(n_samples, len(task.train_y))
        g = _generator(derive_seed(self.seed, "task_batches", task_index), torch.device("cpu"))
        for s in range(0, n, self.eval_batch_size):
            idx = range(s, min(s + self.eval_batch_size, n))
            yield self._encoded(_take(task.train_x, idx), g), task.train_y[s:s + len(idx)].to(self.device)

    # -- evaluation -----------------------------------------------------------------------
    def _samples(self, training: bool) -> int:
        if not self.rule.bayesian:
            return 1
        return self.train_samples if training else self.eval_samples

    @torch.no_grad()
    def _forward_eval(self, x: torch.Tensor, generator) -> torch.Tensor:
        return self.model(x, samples=self._samples(False), generator=generator)

    @torch.no_grad()
    def evaluate(self, task_indices: Sequence[int], update: int | None = None, collect: bool = False) -> _Eval:
        """Held-out accuracy of every task in ``task_indices``; ``collect`` keeps the (M, N, C)
        outputs and labels of each task. Deterministic in (seed, update)."""
        update = self.update if update is None else update
        g_noise = _generator(derive_seed(self.seed, "eval-noise", update), self.device)
        g_enc = _generator(derive_seed(self.seed, "eval-encode", update), torch.device("cpu"))
        accs, outs = {}, ({} if collect else None)
        was_training = self.model.training
        self.model.eval()
        try:
            for k in task_indices:
                correct, total, chunks, labels = 0, 0, [], []
                classes = torch.tensor(self.tasks[k].classes, device=self.device)
                for x, y in self._test_batches(k, g_enc):
                    out = self._forward_eval(x, g_noise)                  # (M, B, C)
                    # (B, C): mean softmax (default) or mean log-softmax (the MESU authors')
                    p = (F.softmax if self.eval_average == "probs" else F.log_softmax)(out.float(), -1).mean(0)
                    if self.eval_mask == "task":
                        pred = classes[p[:, classes].argmax(-1)]
                    else:
                        pred = p.argmax(-1)
                    correct += int((pred == y).sum())
                    total += y.shape[0]
                    if collect:
                        chunks.append(out.cpu())
                        labels.append(y.cpu())
                accs[k] = correct / max(total, 1)
                if collect:
                    outs[k] = (torch.cat(chunks, 1), torch.cat(labels))
        finally:
            self.model.train(was_training)
        return _Eval(accs, outs)

    @torch.no_grad()
    def _ood_outputs(self, update: int) -> torch.Tensor | None:
        if self.ood_inputs is None:
            return None
        g_noise = _generator(derive_seed(self.seed, "ood-noise", update), self.device)
        g_enc = _generator(derive_seed(self.seed, "ood-encode", update), torch.device("cpu"))
        n = len(self.ood_inputs)
        chunks = []
        for s in range(0, n, self.eval_batch_size):
            x = self._encoded(_take(self.ood_inputs, range(s, min(s + self.eval_batch_size, n))), g_enc)
            chunks.append(self._forward_eval(x, g_noise).cpu())
        return torch.cat(chunks, 1)

    def _uncertainty(self, outputs: dict[int, tuple[torch.Tensor, torch.Tensor]], update: int) -> dict:
        per_task = []
        all_out = torch.cat([outputs[k][0] for k in sorted(outputs)], 1)
        all_y = torch.cat([outputs[k][1] for k in sorted(outputs)])
        if not bool(torch.isfinite(all_out).all()):     # a diverged run: no meaningful uncertainty
            return {"samples": self._samples(False), "diverged": True, "predictive_entropy": None,
                    "aleatoric": None, "epistemic": None, "ece": None, "per_task": []}
        for k in sorted(outputs):
            out, y = outputs[k]
            u = M.uncertainty_split(out)
            per_task.append({"task": k, "predictive_entropy": float(u["total"].mean()),
                             "aleatoric": float(u["aleatoric"].mean()), "epistemic": float(u["epistemic"].mean()),
                             "ece": M.expected_calibration_error(out, y)})
        u = M.uncertainty_split(all_out)
        res = {"samples": self._samples(False), "predictive_entropy": float(u["total"].mean()),
               "aleatoric": float(u["aleatoric"].mean()), "epistemic": float(u["epistemic"].mean()),
               "ece": M.expected_calibration_error(all_out, all_y), "per_task": per_task}
        ood = self._ood_outputs(update)
        if ood is not None and not bool(torch.isfinite(ood).all()):
            res["ood"] = {"diverged": True}
        elif ood is not None:
            uo = M.uncertainty_split(ood)
            res["ood"] = {"n_in": int(all_out.shape[1]), "n_out": int(ood.shape[1]),
                          "predictive_entropy": float(uo["total"].mean()), "epistemic": float(uo["epistemic"].mean()),
                          "auroc_entropy": M.auroc(u["total"], uo["total"]),
                          "auroc_mutual_information": M.auroc(u["epistemic"], uo["epistemic"])}
        return res

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoints" / CHECKPOINT_NAME

    def _generators(self) -> dict[str, torch.Generator]:
        return {"noise": self._noise, "encode": self._enc}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "rule": self.rule.state_dict(),
                "rng": capture_rng(self._generators()), "position": self.update,
                "n_updates": self.n_updates, "rule_name": self.rule.name,
                "state": {"R": self.R, "history": self.history, "log_rows": self.log_rows,
                          "train_acc_ema": self.train_acc_ema, "final_metrics": self.final_metrics,
                          "diverged": self._diverged},
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
        self.R, self.history, self.log_rows = st["R"], st["history"], st["log_rows"]
        self.train_acc_ema, self.final_metrics = st["train_acc_ema"], st["final_metrics"]
        self._diverged = bool(st.get("diverged", False))

    def save(self) -> Path | None:
        path = self.checkpoint_path
        if path is None:
            return None
        return save_checkpoint(path, self.state_dict())

    # -- logging --------------------------------------------------------------------------
    def _log_fields(self) -> list[str]:
        return ["update", "samples", "task", "loss", "train_acc", "eval_avg_acc"] + \
               [f"acc_task_{k}" for k in range(self.n_tasks)]

    def _rewrite_log(self) -> None:
        if self.run_dir is None:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self._log_fields(), lineterminator="\n")
        w.writeheader()
        w.writerows(self.log_rows)
        atomic_write_text(self.run_dir / "log.csv", buf.getvalue())

    def _append_log(self, row: dict) -> None:
        self.log_rows.append(row)
        if self._log_file is not None:
            csv.DictWriter(self._log_file, fieldnames=self._log_fields(), lineterminator="\n").writerow(row)

    # -- the loop ---------------------------------------------------------------------------
    def _resume(self) -> bool:
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        self.load_state_dict(load_checkpoint(path))
        return True

    def fit(self, resume: bool = False) -> dict:
        """Run (or, with ``resume``, continue from ``run_dir/checkpoints/last.pt``) and return
        the metrics dict (also written to ``run_dir/metrics.json``)."""
        from tqdm import tqdm

        self._reset_state()
        resumed = self._resume() if resume else False
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.final_metrics is not None:        # the run had finished
            self._write_outputs(self.final_metrics)
            return self.final_metrics
        if self.run_dir is not None:
            self._rewrite_log()
        self._log_file = open(self.run_dir / "log.csv", "a", newline="") if self.run_dir is not None else None
        t0 = time.time()
        start = self.update
        for cb in self.callbacks:
            cb.on_start(self.model, self.rule.optimizer, dict(self.config, resumed=resumed, start_update=start))
        self.model.train()
        bar = tqdm(total=self.n_updates, initial=start, desc=self.desc, disable=not self.progress,
                   unit="upd", dynamic_ncols=True, leave=True)
        last_eval = self._last_eval_avg()
        try:
            batches = itertools.islice(iter(self.stream), start, None)
            for u, (x_raw, y) in enumerate(batches, start=start + 1):
                self.update = u
                loss, acc = self._train_step(x_raw, y)
                self._diverged = self._diverged or not math.isfinite(loss)
                self.train_acc_ema = acc if self.train_acc_ema is None else 0.9 * self.train_acc_ema + 0.1 * acc
                for cb in self.callbacks:
                    cb.on_update(u, self.model, self.rule.optimizer)
                ev = self._maybe_evaluate(u)
                row = {"update": u, "samples": min(u * self.batch_size, self.n_samples),
                       "task": self.batch_task[u - 1], "loss": f"{loss:.6g}", "train_acc": f"{acc:.4f}",
                       "eval_avg_acc": "", **{f"acc_task_{k}": "" for k in range(self.n_tasks)}}
                if ev is not None:
                    last_eval = float(np.mean(list(ev.accuracy.values())))
                    row["eval_avg_acc"] = f"{last_eval:.4f}"
                    for k, a in ev.accuracy.items():
                        row[f"acc_task_{k}"] = f"{a:.4f}"
                self._append_log(row)
                bar.update(1)
                if u % 5 == 0 or ev is not None:
                    post = {"task": f"{self.batch_task[u - 1] + 1}/{self.n_tasks}",
                            "train_acc": f"{self.train_acc_ema:.3f}"}
                    if last_eval is not None:
                        post["avg_acc"] = f"{last_eval:.3f}"
                    bar.set_postfix(post, refresh=False)
                if u == self.n_updates:
                    self.final_metrics = self._finish(ev)
                if self.checkpoint_every and u % self.checkpoint_every == 0 and u < self.n_updates:
                    self._flush_log()
                    self.save()
        finally:
            bar.close()
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        if self.final_metrics is None:
            raise RuntimeError("the stream ended before its last update")  # pragma: no cover
        self.save()
        self._write_outputs(self.final_metrics, timing={"wall_s": time.time() - t0, "updates": self.n_updates - start,
                                                        "resumed_from": start})
        for cb in self.callbacks:
            cb.on_end(self.model, self.rule.optimizer)
        return self.final_metrics

    def _flush_log(self) -> None:
        if self._log_file is not None:
            self._log_file.flush()

    def _train_step(self, x_raw, y: torch.Tensor) -> tuple[float, float]:
        x = self._encoded(x_raw, self._enc)
        y = y.to(self.device)
        out = self.model(x, samples=self._samples(True), generator=self._noise)
        loss = self.rule.loss(out, y)
        self.rule.zero_grad()
        loss.backward()
        self.rule.step()
        with torch.no_grad():
            acc = float((out.detach().softmax(-1).mean(0).argmax(-1) == y).float().mean())
        return float(loss.detach()), acc

    def _maybe_evaluate(self, u: int) -> _Eval | None:
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

    def _finish(self, ev: _Eval | None) -> dict:
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
            "uncertainty": self._uncertainty(ev.outputs, self.n_updates),
            "accuracy_over_time": self.history,
            "skipped_steps": int(getattr(self.rule.optimizer, "skipped_steps", 0)),
            "diverged": bool(self._diverged),
            "seed": self.seed,
        }

    def _write_outputs(self, metrics: dict, timing: dict | None = None) -> None:
        if self.run_dir is None:
            return
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        self._rewrite_log()
        if timing is not None:
            atomic_write_text(self.run_dir / "timing.json", json.dumps(timing, indent=2) + "\n")
