"""Evaluation, usable without a trainer: held-out accuracy of each task, the outputs for the
uncertainty metrics, and encoded task batches. The trainer uses one :class:`Evaluator`; the
``export --evaluate`` and ``plot --importance`` commands build one from a run's config.

Determinism: every evaluation uses fresh generators derived from (seed, update), so
evaluating never perturbs training and is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import metrics as M
from .seeding import derive_seed, generator
from .streams import TaskStream, take

__all__ = ["Evaluator", "Evaluation", "EVAL_MASKS"]

EVAL_MASKS = (None, "task")


@dataclass
class Evaluation:
    """One evaluation: accuracy per task index (and outputs when collected)."""
    accuracy: dict[int, float]
    outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None


class Evaluator:
    """Scores ``model`` on the test sets of ``tasks``.

    encode: raw batch -> (T, B, ...) model input (cached for test sets when
        ``encode.deterministic``). samples: M Monte-Carlo samples (1 for mean-mode models).
    mask: None (single head over all classes) or ``"task"`` (argmax over task j's classes when
        scoring task j; the uncertainty metrics always use all classes). The prediction is the
        argmax of the sample-mean softmax (``average="probs"``, the Bayesian model average) or of the
    sample-mean log-softmax (``"log_probs"``, the MESU authors' evaluation).
    ood_inputs: raw inputs never trained on, for OOD AUROC in :meth:`uncertainty`.
    """

    def __init__(self, model: nn.Module, tasks: TaskStream, encode, *, samples: int = 8, batch_size: int = 256,
                 mask: str | None = None, average: str = "probs", seed: int = 0, device: str | torch.device = "cpu", ood_inputs=None,
                 ood_description: str = "inputs never trained on"):
        if mask not in EVAL_MASKS:
            raise ValueError(f"eval_mask must be None or 'task', got {mask!r}")
        self.model, self.tasks, self.encode = model, tasks, encode
        if average not in ("probs", "log_probs"):
            raise ValueError(f"eval_average must be 'probs' or 'log_probs', got {average!r}")
        self.samples, self.eval_batch_size, self.eval_mask, self.average = samples, batch_size, mask, average
        self.seed, self.device, self.ood_inputs = int(seed), torch.device(device), ood_inputs
        self.ood_description = ood_description
        self._eval_cache: dict = {}

    def _encoded(self, x_raw, generator) -> torch.Tensor:
        return self.encode(x_raw, generator).to(self.device, non_blocking=True)

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
                x = self._encoded(take(task.test_x, idx), generator)
                if cache:
                    self._eval_cache[key] = x
            yield x, task.test_y[s:s + len(idx)].to(self.device)

    def task_batches(self, task_index: int, n_samples: int | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Encoded training batches of task ``task_index`` (first ``n_samples``, in order), for
        rules that use boundaries (EWC's Fisher). Deterministic in (seed, task)."""
        task = self.tasks[task_index]
        n = len(task.train_y) if n_samples is None else min(n_samples, len(task.train_y))
        g = generator(derive_seed(self.seed, "task_batches", task_index), torch.device("cpu"))
        for s in range(0, n, self.eval_batch_size):
            idx = range(s, min(s + self.eval_batch_size, n))
            yield self._encoded(take(task.train_x, idx), g), task.train_y[s:s + len(idx)].to(self.device)

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def _forward_eval(self, x: torch.Tensor, generator) -> torch.Tensor:
        return self.model(x, samples=self.samples, generator=generator)

    @torch.no_grad()
    def evaluate(self, task_indices: Sequence[int], update: int | None = None, collect: bool = False) -> Evaluation:
        """Held-out accuracy of every task in ``task_indices``; ``collect`` keeps the (M, N, C)
        outputs and labels of each task. Deterministic in (seed, update)."""
        update = 0 if update is None else update
        g_noise = generator(derive_seed(self.seed, "eval-noise", update), self.device)
        g_enc = generator(derive_seed(self.seed, "eval-encode", update), torch.device("cpu"))
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
                    p = (F.softmax if self.average == "probs" else F.log_softmax)(out.float(), -1).mean(0)
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
        return Evaluation(accs, outs)

    @torch.no_grad()
    def _ood_outputs(self, update: int) -> torch.Tensor | None:
        if self.ood_inputs is None:
            return None
        g_noise = generator(derive_seed(self.seed, "ood-noise", update), self.device)
        g_enc = generator(derive_seed(self.seed, "ood-encode", update), torch.device("cpu"))
        n = len(self.ood_inputs)
        chunks = []
        for s in range(0, n, self.eval_batch_size):
            x = self._encoded(take(self.ood_inputs, range(s, min(s + self.eval_batch_size, n))), g_enc)
            chunks.append(self._forward_eval(x, g_noise).cpu())
        return torch.cat(chunks, 1)

    def uncertainty(self, outputs: dict[int, tuple[torch.Tensor, torch.Tensor]], update: int) -> dict:
        per_task = []
        all_out = torch.cat([outputs[k][0] for k in sorted(outputs)], 1)
        all_y = torch.cat([outputs[k][1] for k in sorted(outputs)])
        if not bool(torch.isfinite(all_out).all()):     # a diverged run: no meaningful uncertainty
            return {"samples": self.samples, "diverged": True, "predictive_entropy": None,
                    "aleatoric": None, "epistemic": None, "ece": None, "per_task": []}
        for k in sorted(outputs):
            out, y = outputs[k]
            u = M.uncertainty_split(out)
            per_task.append({"task": k, "predictive_entropy": float(u["total"].mean()),
                             "aleatoric": float(u["aleatoric"].mean()), "epistemic": float(u["epistemic"].mean()),
                             "ece": M.expected_calibration_error(out, y)})
        u = M.uncertainty_split(all_out)
        res = {"samples": self.samples, "predictive_entropy": float(u["total"].mean()),
               "aleatoric": float(u["aleatoric"].mean()), "epistemic": float(u["epistemic"].mean()),
               "ece": M.expected_calibration_error(all_out, all_y), "per_task": per_task,
               "n_examples": int(all_out.shape[1]),
               "scoring": "single head over all classes: argmax / confidence of the sample-mean softmax "
                          "(no task mask, even where accuracy is scored task-incrementally); ECE with 15 "
                          "equal-width confidence bins"}
        ood = self._ood_outputs(update)
        if ood is not None and not bool(torch.isfinite(ood).all()):
            res["ood"] = {"diverged": True}
        elif ood is not None:
            uo = M.uncertainty_split(ood)
            res["ood"] = {"set": self.ood_description, "n_in": int(all_out.shape[1]), "n_out": int(ood.shape[1]),
                          "orientation": "OOD is the positive class, scored by higher entropy / mutual "
                                         "information; 0.5 is chance, below 0.5 means OOD inputs look *more* "
                                         "certain than the test sets",
                          "predictive_entropy": float(uo["total"].mean()), "epistemic": float(uo["epistemic"].mean()),
                          "auroc_entropy": M.auroc(u["total"], uo["total"]),
                          "auroc_mutual_information": M.auroc(u["epistemic"], uo["epistemic"])}
        return res
