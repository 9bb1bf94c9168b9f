"""From a validated :class:`~mesu_snn.config.RunConfig` to the objects of a run: the task
stream, the input pipeline, the model, the rule, the OOD set and the :class:`Trainer`.

Same model, data and seeds for every rule: the model's initial μ, σ come from
``derive_seed(seed, "model")``, the permutations/splits and the sample order from the stream
seed, so two configs that differ only in ``[rule]`` train the same network on the same batches.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .callbacks import Progress, SigmaWatch
from .config import ConfigWarning, RunConfig
from .datasets import EventDataset, load_digits, load_mnist, load_nmnist, load_shd
from .encoders import (CurrentEncoder, EventFrameEncoder, LatencyEncoder, RateEncoder, check_tonic_transforms,
                       current_encode, standardization_stats, standardize, to_unit_interval, tonic_frames,
                       tonic_sensor_size)
from .models import model_from_spec
from .rules import make_rule
from .rules.rule import Rule
from .streams import (PermuteAddresses, PermutedInputs, TaskStream, class_incremental_tasks, permuted_tasks,
                      split_tasks)
from .seeding import derive_seed
from .evaluation import Evaluator
from .trainer import Trainer

__all__ = ["InputPipeline", "load_raw_data", "build_tasks", "build_pipeline", "build_model", "build_rule",
           "build_ood", "build_trainer", "build_evaluator", "eval_mask_for", "resolve_device"]

_ALL = 10 ** 9   # "keep every sample" for TaskStream.subsample


@dataclass(frozen=True)
class InputPipeline:
    """Raw batch -> model input (T, B, ...): float tensor (B, ...) or uint8 images, or a list
    of event arrays (``frames``).

    current: constant current ``gain·x``; standardized: constant signed current
    ``gain·(x − mean)/std``; rate: Bernoulli with p = ``gain·x``; latency: one spike per pixel,
    brighter earlier; frames: event counts per time bin, times ``gain``, after the Tonic
    ``transforms`` if any (checked specs of :func:`~mesu_snn.encoders.check_tonic_transforms`).
    ``flatten``: (T, B, ...) -> (T, B, features) for an MLP; otherwise static images get a
    channel dim, (T, B, 1, H, W), for a conv net. ``static``: no time dim, (B, features), for a
    non-spiking ``ann`` (current/standardized only).
    """
    kind: str
    num_steps: int
    gain: float = 1.0
    flatten: bool = True
    tau: float = 5.0
    threshold: float = 0.01
    linear: bool = False
    sensor_size: tuple[int, int, int] | None = None
    duration_us: float | None = None
    mean: float = 0.0
    std: float = 1.0
    static: bool = False
    transforms: tuple = ()

    @property
    def deterministic(self) -> bool:
        return self.kind != "rate"

    def __call__(self, x_raw, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "frames":
            if self.sensor_size is None:
                raise ValueError("the frames pipeline needs sensor_size")
            if self.transforms:
                x = tonic_frames(x_raw, self.transforms, self.sensor_size, self.num_steps, self.duration_us)
            else:
                x = EventFrameEncoder(self.sensor_size, self.num_steps, self.duration_us)(x_raw)  # (T, B, P, H, W)
            if self.gain != 1.0:
                x = x * self.gain
        elif self.static:
            if self.kind not in ("current", "standardized"):
                raise ValueError(f"a static (ann) pipeline takes 'current' or 'standardized', got {self.kind!r}")
            x = standardize(x_raw, self.mean, self.std) if self.kind == "standardized" else to_unit_interval(x_raw)
            return (x * self.gain).flatten(1)
        else:
            x = to_unit_interval(x_raw)
            if self.kind == "standardized":
                x = current_encode(standardize(x, self.mean, self.std) * self.gain, self.num_steps)
            elif self.kind == "current":      # the encoders' Tonic-style transforms (mesu_snn.encoders)
                x = CurrentEncoder(self.num_steps)(x * self.gain)
            elif self.kind == "rate":
                x = RateEncoder(self.num_steps, self.gain)(x, generator=generator)
            elif self.kind == "latency":
                x = LatencyEncoder(self.num_steps, self.tau, self.threshold, linear=self.linear)(x)
            else:
                raise ValueError(f"unknown encoder kind {self.kind!r}")
            if not self.flatten:
                x = x.unsqueeze(2)                                                         # (T, B, 1, H, W)
        return x.flatten(2) if self.flatten else x


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("config field schedule.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def load_raw_data(cfg: RunConfig):
    """(x_train, y_train, x_test, y_test) of the configured dataset: uint8/float images or
    EventDatasets. Missing files raise FileNotFoundError naming them."""
    d = cfg.data
    if d.dataset == "digits":
        xtr, ytr = load_digits("train", d.test_fraction, seed=0)
        xte, yte = load_digits("test", d.test_fraction, seed=0)
    elif d.dataset in ("mnist", "fashion_mnist"):
        fashion = d.dataset == "fashion_mnist"
        xtr, ytr = load_mnist(d.root, "train", fashion=fashion)
        xte, yte = load_mnist(d.root, "test", fashion=fashion)
    elif d.dataset == "nmnist":
        xtr = load_nmnist(d.root, "train", first_saccade_only=d.first_saccade_only)
        xte = load_nmnist(d.root, "test", first_saccade_only=d.first_saccade_only)
        ytr, yte = xtr.labels, xte.labels
    elif d.dataset == "shd":
        xtr, xte = load_shd(d.root, "train"), load_shd(d.root, "test")
        ytr, yte = xtr.labels, xte.labels
    else:  # pragma: no cover - validated by the config
        raise ValueError(f"unknown dataset {d.dataset!r}")
    return xtr, ytr, xte, yte


def stream_seed(cfg: RunConfig) -> int:
    return cfg.seed if cfg.stream.seed is None else cfg.stream.seed


def build_tasks(cfg: RunConfig, raw=None) -> TaskStream:
    """The configured tasks (subsampled per task if asked)."""
    xtr, ytr, xte, yte = load_raw_data(cfg) if raw is None else raw
    s, seed = cfg.stream, stream_seed(cfg)
    if s.kind == "permuted":
        tasks = permuted_tasks(xtr, ytr, xte, yte, s.n_tasks, seed=seed)
    else:
        classes = sorted(set(torch.as_tensor(ytr).tolist()))
        if s.classes_per_task > len(classes):
            raise ValueError(f"config field stream.classes_per_task: {s.classes_per_task} exceeds the "
                             f"{len(classes)} classes of {cfg.data.dataset}")
        if s.kind == "split":
            groups = [classes[i:i + s.classes_per_task] for i in range(0, len(classes), s.classes_per_task)]
            tasks = split_tasks(xtr, ytr, xte, yte, groups)
        else:
            tasks = class_incremental_tasks(xtr, ytr, xte, yte, s.classes_per_task, seed=seed)
    d = cfg.data
    for name, want, sizes in (("train_per_task", d.train_per_task, [len(t.train_y) for t in tasks]),
                              ("test_per_task", d.test_per_task, [len(t.test_y) for t in tasks])):
        if want is not None and want > min(sizes):     # never capped silently
            k = sizes.index(min(sizes))
            warnings.warn(ConfigWarning(
                f"config field data.{name}: {want} is more than the {min(sizes)} {name.split('_')[0]} samples of task {k} "
                f"({tasks[k].name}); tasks with fewer samples keep all of theirs"), stacklevel=2)
    if d.train_per_task is not None or d.test_per_task is not None:
        tasks = tasks.subsample(d.train_per_task or _ALL, d.test_per_task, seed=derive_seed(seed, "subsample") % 2**31)
    return tasks


def eval_mask_for(cfg: RunConfig) -> str | None:
    """Split tasks are scored task-incrementally (argmax over the task's classes, at evaluation
    only); permuted and class-incremental streams over all classes."""
    return "task" if cfg.stream.kind == "split" else None


def _event_transforms(cfg: RunConfig) -> tuple:
    return tuple(check_tonic_transforms(cfg.encoder.transforms, cfg.encoder.num_steps))


def _sample_shape(tasks: TaskStream, cfg: RunConfig) -> tuple[int, ...]:
    """One model input's shape: (P, H, W) for events (after the Tonic transforms), else the sample's."""
    x = tasks[0].train_x
    if isinstance(x, EventDataset):
        w, h, p = tonic_sensor_size(_event_transforms(cfg), x.sensor_size)
        return (p, h, w)
    return tuple(x.shape[1:])


def build_pipeline(cfg: RunConfig, tasks: TaskStream) -> InputPipeline:
    e = cfg.encoder
    sensor = tasks[0].train_x.sensor_size if isinstance(tasks[0].train_x, EventDataset) else None
    mean, std = 0.0, 1.0
    if e.kind == "standardized":
        # scalar pixel stats of the training images (permutation-invariant, so task 0's will do)
        x = tasks[0].train_x
        mean, std = standardization_stats(x.base if isinstance(x, PermutedInputs) else torch.as_tensor(x))
    pipe = InputPipeline(kind=e.kind, num_steps=e.num_steps, gain=e.gain, flatten=cfg.model.kind in ("mlp", "ann"),
                         tau=e.tau, threshold=e.threshold, linear=e.linear, sensor_size=sensor,
                         duration_us=e.duration_us, mean=mean, std=std, static=cfg.model.kind == "ann",
                         transforms=_event_transforms(cfg))
    if pipe.transforms:                  # a transform that cannot take this data fails here, not mid-run
        try:
            pipe(tasks[0].train_x.get_events([0]))
        except Exception as exc:         # Tonic raises anything (AssertionError, KeyError, ValueError)
            names = " -> ".join(n for n, _ in pipe.transforms)
            raise ValueError(f"config field encoder.transforms: {names} fails on a {cfg.data.dataset} recording "
                             f"(sensor {sensor}): {type(exc).__name__}: {exc}") from None
    return pipe


def build_model(cfg: RunConfig, tasks: TaskStream) -> nn.Module:
    """The configured network, initialised from derive_seed(seed, "model") (the same for every rule)."""
    m = cfg.model
    shape = _sample_shape(tasks, cfg)
    n_classes = max(tasks.classes) + 1
    if m.kind == "ann":
        spec = {"class": "BayesMLP", "sizes": [int(np.prod(shape)), *m.hidden, n_classes], "activation": m.activation,
                "bias": bool(m.bias), "init": m.init, "mu_init": m.mu_init, "sigma_init": m.sigma_init}
        return model_from_spec(spec, seed=derive_seed(cfg.seed, "model") % 2**63)
    common = dict(readout=m.readout, init=m.init, mu_init=m.mu_init, sigma_init=m.sigma_init,
                  neuron=dict(beta=m.beta, threshold=m.threshold, reset=m.reset, surrogate=m.surrogate,
                              reset_delay=m.reset_delay))
    if m.kind == "mlp":
        spec = dict(common, **{"class": "SpikingMLP", "sizes": [int(np.prod(shape)), *m.hidden, n_classes],
                               "bias": True if m.bias is None else bool(m.bias)})
    else:
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise ValueError(f"config field model.kind: 'conv' needs image or event-frame inputs, got samples of "
                             f"shape {shape}")
        spec = dict(common, **{"class": "SpikingConvNet", "input_shape": list(shape),
                               "channels": [shape[0], *m.channels], "n_classes": n_classes,
                               "kernel_size": m.kernel_size})
    return model_from_spec(spec, seed=derive_seed(cfg.seed, "model") % 2**63)


def build_rule(cfg: RunConfig, model: nn.Module) -> Rule:
    def no_clamp(hp: dict) -> dict:          # a config's clamp_grad = 0 means no clamp (TOML has no None)
        return {k: (None if k == "clamp_grad" and v == 0 else v) for k, v in hp.items()}
    params = dict(cfg.rule.params)
    if cfg.rule.name in ("mesu", "mesu_online"):
        params = no_clamp(params)
        if isinstance(params.get("per_layer"), dict):
            params["per_layer"] = {pat: no_clamp(hp) for pat, hp in params["per_layer"].items()}
    try:
        return make_rule(cfg.rule.name, model, **params)
    except ValueError as e:
        raise ValueError(f"config table [rule]: {e}") from None


OOD_DESCRIPTION = ("the first task's test inputs under a fresh random permutation of the pixels (event "
                   "addresses), a permutation no task uses")


def build_ood(cfg: RunConfig, tasks: TaskStream):
    """Inputs no task ever shows: the first task's test inputs under a fresh random pixel
    (address) permutation, drawn from derive_seed(seed, "ood"). None if ``schedule.ood`` is off."""
    if not cfg.schedule.ood:
        return None
    x = tasks[0].test_x
    g = torch.Generator()
    g.manual_seed(derive_seed(stream_seed(cfg), "ood") % 2**63)
    if isinstance(x, EventDataset):
        w, h, _ = x.sensor_size
        perm = torch.randperm(w * h, generator=g).numpy()
        return x.with_transform(PermuteAddresses(perm, w))
    base = x.materialize() if isinstance(x, PermutedInputs) else x
    perm = torch.randperm(int(math.prod(base.shape[1:])), generator=g)
    return PermutedInputs(base, perm)


def build_trainer(cfg: RunConfig, progress: bool = False, callbacks=(), tasks: TaskStream | None = None,
                  desc: str | None = None) -> Trainer:
    """Everything for one run of ``cfg`` (pass ``tasks`` to reuse loaded data across rules).
    It writes no file; :func:`mesu_snn.runs.build_run` adds the run-directory writers."""
    tasks = build_tasks(cfg) if tasks is None else tasks
    model = build_model(cfg, tasks)
    device = resolve_device(cfg.schedule.device)
    model.to(device)
    rule = build_rule(cfg, model)
    s, sch = cfg.stream, cfg.schedule
    return Trainer(model, rule, tasks, build_pipeline(cfg, tasks), batch_size=s.batch_size,
                   epochs_per_task=s.epochs_per_task, boundary=s.boundary, transition=s.transition,
                   stream_seed=stream_seed(cfg), train_samples=sch.train_samples, eval_samples=sch.eval_samples,
                   eval_every=sch.eval_every, eval_batch_size=sch.eval_batch_size, eval_mask=eval_mask_for(cfg),
                   eval_average=sch.eval_average,
                   seed=cfg.seed, last_k=sch.last_k, chance_patience=sch.chance_patience,
                   max_abs_parameter=sch.max_abs_parameter, ood_inputs=build_ood(cfg, tasks),
                   ood_description=OOD_DESCRIPTION,
                   callbacks=[*callbacks, *([SigmaWatch()] if rule.bayesian else []),
                              *([Progress(desc)] if progress else [])], desc=desc,
                   device=device, config=cfg.to_dict())


def build_evaluator(cfg: RunConfig, model: nn.Module, tasks: TaskStream | None = None,
                    samples: int | None = None) -> Evaluator:
    """An :class:`~mesu_snn.evaluation.Evaluator` of ``model`` on the test sets of ``cfg`` (the
    same data, pipeline, masking and seed as its training run), without building a trainer.
    samples: M (default: the config's ``eval_samples``; 1 when the model is in mean mode)."""
    tasks = build_tasks(cfg) if tasks is None else tasks
    device = resolve_device(cfg.schedule.device)
    return Evaluator(model, tasks, build_pipeline(cfg, tasks), samples=samples or cfg.schedule.eval_samples,
                     batch_size=cfg.schedule.eval_batch_size, mask=eval_mask_for(cfg),
                     average=cfg.schedule.eval_average, seed=cfg.seed, device=device,
                     ood_inputs=build_ood(cfg, tasks), ood_description=OOD_DESCRIPTION)
