"""Run configuration: TOML file -> validated dataclasses (and back).

A run is described by seven parts: ``seed`` and the tables ``[data]``, ``[stream]``,
``[encoder]``, ``[model]``, ``[rule]`` and ``[schedule]``. Every field is checked on load;
an error names the field, e.g. ``config field stream.n_tasks: must be an integer >= 1, got 0``.
Unknown fields are errors too (a typo never silently falls back to a default). Example::

    seed = 0

    [data]
    dataset = "mnist"          # digits | mnist | fashion_mnist | nmnist | shd
    # root = "/data/sets"    # optional; default: --data-root, else $MESU_SNN_DATA, else ./data
    train_per_task = 300       # class-balanced subsample of every task (omit: all)
    test_per_task = 200

    [stream]
    kind = "permuted"          # permuted | split | class_incremental
    n_tasks = 10
    batch_size = 16

    [encoder]
    kind = "current"           # current | standardized | rate | latency | frames
    num_steps = 10
    gain = 2.0
    # event data (kind = "frames"): Tonic transforms by name, applied in order before binning;
    # a final ToFrame bins with Tonic instead:
    # transforms = [{name = "Denoise", filter_time = 10000}, {name = "ToFrame"}]

    [model]
    kind = "mlp"               # mlp | conv | ann (non-spiking BayesMLP)
    hidden = [64]

    [rule]
    name = "mesu"              # mesu | bgd | sgd | adam | ewc | si | mesu_online | sgd_online
    memory = 3000
    sigma_prior = 0.1

    [schedule]
    train_samples = 4          # Monte-Carlo weight samples per update (Bayesian rules)
    eval_every = 50            # evaluate every K updates besides each task end (0: task ends only)
    checkpoint_every = 50      # atomic checkpoint every K updates (0: at the end only)

The learner never sees task boundaries: MESU, BGD, SGD and Adam train on a task-free
stream. Online EWC and SI are given the boundaries (documented in their classes).
"""
from __future__ import annotations

import math
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .bounds import BOUNDS, check_number, describe
from .errors import MesuError
from .functional.lif import RESETS
from .encoders import check_tonic_transforms
from .functional.surrogate import SURROGATES
from .models import ACTIVATIONS as _MODEL_ACTIVATIONS
from .models import READOUTS
from .synapses import INITS as _SYN_INITS
from .rules.registry import RULES, hyperparameters

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "ConfigWarning", "warn_unused_samples", "estimate_memory", "check_memory", "RunConfig", "DataConfig", "StreamConfig", "EncoderConfig", "ModelConfig",
           "RuleConfig", "ScheduleConfig", "load_config", "parse_config", "dump_toml"]

DATASETS = ("digits", "mnist", "fashion_mnist", "nmnist", "shd")
EVENT_DATASETS = ("nmnist", "shd")
STREAM_KINDS = ("permuted", "split", "class_incremental")
BOUNDARIES = ("sharp", "blurred")
ENCODERS = ("current", "standardized", "rate", "latency", "frames")
#: encoder.gain when the config leaves it out
GAIN_DEFAULTS = {"current": 2.0, "standardized": 2.0, "rate": 1.0, "latency": 1.0, "frames": 2.0}
MODEL_KINDS = ("mlp", "conv", "ann")
INITS = tuple(_SYN_INITS)
ACTIVATIONS = tuple(_MODEL_ACTIVATIONS)
EVAL_AVERAGES = ("probs", "log_probs")
DEVICES = ("cpu", "cuda", "auto")
#: every dataset has 10 classes; sample shape (channels, height, width) and test-set size,
#: for the memory estimate made before any data is loaded
N_CLASSES = 10
#: classes per dataset (the split streams' task count and the memory estimate read it)
DATASET_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "nmnist": 10, "shd": 20}
#: one sample's (channels, height, width) before encoding (SHD: 700 cochlear channels)
SAMPLE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "nmnist": (2, 34, 34),
                 "shd": (1, 1, 700)}
TEST_SIZES = {"digits": 450, "mnist": 10_000, "fashion_mnist": 10_000, "nmnist": 10_000, "shd": 2_264}  # SHD test set: 2,264


class ConfigError(MesuError, ValueError):
    """A configuration value is missing, of the wrong type or out of range (names the field)."""


class ConfigWarning(UserWarning):
    """A configuration value that cannot be honoured exactly (e.g. more samples per task than
    the data has): the run goes on, and this says what it does instead."""


def _err(path: str, msg: str) -> ConfigError:
    return ConfigError(f"config field {path}: {msg}")


# -- field checkers -----------------------------------------------------------------------

#: the largest integer a field takes (sizes, counts, steps: int32 indices); seeds take int64
INT_MAX, SEED_MAX = 2**31 - 1, 2**63 - 1


def _int(path, v, lo=None, allow_none=False, hi=INT_MAX):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(path, f"must be an integer{'' if lo is None else f' >= {lo}'}, got {v!r}")
    if lo is not None and v < lo:
        raise _err(path, f"must be an integer >= {lo}, got {v!r}")
    if v > hi:
        raise _err(path, f"must be an integer <= {hi}, got {v!r}")
    return v


def _float(path, v, lo=None, lo_open=False, hi=None, hi_open=False, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _err(path, f"must be a finite number, got {v!r}")
    v = float(v)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise _err(path, f"must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise _err(path, f"must be {'<' if hi_open else '<='} {hi}, got {v!r}")
    return v


def _bool(path, v):
    if not isinstance(v, bool):
        raise _err(path, f"must be true or false, got {v!r}")
    return v


def _choice(path, v, choices):
    if v not in choices:
        raise _err(path, f"must be one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


def _str(path, v, allow_none=False):
    if v is None and allow_none:
        return None
    if not isinstance(v, str) or not v.strip():
        raise _err(path, f"must be a non-empty string, got {v!r}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _err(path, f"must be valid Unicode text (no lone surrogates), got {v!r}") from None
    return v


def _int_list(path, v, lo=1, min_len=1):
    if not isinstance(v, (list, tuple)) or len(v) < min_len:
        need = "a list of integers" if min_len == 0 else f"a list of at least {min_len} integer{'s' * (min_len > 1)}"
        raise _err(path, f"must be {need}, got {v!r}")
    return [_int(f"{path}[{i}]", x, lo) for i, x in enumerate(v)]


# -- sections ----------------------------------------------------------------------------

@dataclass
class DataConfig:
    """``[data]``: which dataset, where, and how many samples of each task to keep."""
    dataset: str = "digits"
    root: str | None = None
    train_per_task: int | None = None
    test_per_task: int | None = None
    first_saccade_only: bool = False     # N-MNIST: keep the first 100 ms saccade
    test_fraction: float = 0.25          # digits: share held out for testing

    def validate(self, p="data"):
        _choice(f"{p}.dataset", self.dataset, DATASETS)
        _str(f"{p}.root", self.root, allow_none=True)
        _int(f"{p}.train_per_task", self.train_per_task, 1, allow_none=True)
        _int(f"{p}.test_per_task", self.test_per_task, 1, allow_none=True)
        _bool(f"{p}.first_saccade_only", self.first_saccade_only)
        self.test_fraction = _float(f"{p}.test_fraction", self.test_fraction, 0.0, True, 1.0, True)


@dataclass
class StreamConfig:
    """``[stream]``: the task sequence and how it is presented (always task-free to the learner)."""
    kind: str = "permuted"
    n_tasks: int | None = None           # permuted (default 5); split/class_incremental: fixed by the classes
    classes_per_task: int | None = None  # split / class_incremental (default 2)
    boundary: str = "sharp"
    transition: float = 0.2              # blurred: width of the mixing window (share of a task)
    epochs_per_task: int = 1
    batch_size: int = 16
    seed: int | None = None              # permutations/sample order; default: the run seed

    def validate(self, p="stream"):
        _choice(f"{p}.kind", self.kind, STREAM_KINDS)
        _int(f"{p}.n_tasks", self.n_tasks, 1, allow_none=True, hi=100_000)
        _int(f"{p}.classes_per_task", self.classes_per_task, 1, allow_none=True, hi=max(DATASET_CLASSES.values()))
        if self.kind == "permuted":       # nothing given is silently ignored
            if self.classes_per_task is not None:
                raise _err(f"{p}.classes_per_task", "applies to split and class_incremental streams only (a permuted "
                           "stream keeps all classes in every task): remove it")
            if self.n_tasks is None:
                self.n_tasks = 5
        else:
            if self.classes_per_task is None:
                self.classes_per_task = 2     # its task count depends on the dataset: RunConfig.validate
        _choice(f"{p}.boundary", self.boundary, BOUNDARIES)
        self.transition = _float(f"{p}.transition", self.transition, 0.0, True, 1.0)
        _int(f"{p}.epochs_per_task", self.epochs_per_task, 1)
        _int(f"{p}.batch_size", self.batch_size, 1)
        _int(f"{p}.seed", self.seed, 0, allow_none=True, hi=SEED_MAX)


@dataclass
class EncoderConfig:
    """``[encoder]``: static inputs -> spikes/currents (T, B, ...), or events -> frames.
    ``standardized``: signed currents gain·(x − mean)/std with the training set's pixel mean/std
    (the MESU authors' input), for T steps; for ``model.kind = "ann"`` the (B, features) inputs."""
    kind: str = "current"
    num_steps: int = 10                  # T (for frames: the number of time bins)
    gain: float | None = None            # current: input scale; rate: spike-probability gain (<= 1);
                                         # None: the kind's default (GAIN_DEFAULTS)
    tau: float = 5.0                     # latency
    threshold: float = 0.01              # latency
    linear: bool = False                 # latency
    duration_us: float | None = None     # frames: fixed window [0, duration) in µs
    transforms: list[dict] = field(default_factory=list)   # frames: Tonic transforms, e.g.
                                         # [{name = "Denoise", filter_time = 10000}] (TONIC_TRANSFORMS)

    def validate(self, p="encoder"):
        _choice(f"{p}.kind", self.kind, ENCODERS)
        _int(f"{p}.num_steps", self.num_steps, 1)
        if self.gain is None:            # a default valid for every kind: a rate code's gain is a probability scale
            self.gain = GAIN_DEFAULTS[self.kind]
        self.gain = _float(f"{p}.gain", self.gain, 0.0)
        self.tau = _float(f"{p}.tau", self.tau, 0.0, True)
        self.threshold = _float(f"{p}.threshold", self.threshold, 0.0, True, 1.0, True)
        _bool(f"{p}.linear", self.linear)
        self.duration_us = _float(f"{p}.duration_us", self.duration_us, 0.0, True, allow_none=True)
        try:
            check_tonic_transforms(self.transforms, self.num_steps)
        except ValueError as e:
            raise _err(f"{p}.{str(e).split(': ', 1)[0]}", str(e).split(": ", 1)[1]) from None
        if self.duration_us is not None and self.transforms and self.transforms[-1].get("name") == "ToFrame":
            raise _err(f"{p}.duration_us", "applies to the built-in binning; with ToFrame last, crop with "
                       "{name = \"CropTime\", max = ...} instead")


@dataclass
class ModelConfig:
    """``[model]``: a Bayesian spiking MLP or conv net, or a non-spiking ``ann`` (BayesMLP with
    ``activation``, ``bias``); input and output sizes come from the data. ``init``: a named
    initialisation (``"authors"``: μ ~ U(±4/√fan_in), σ₀ = 2/√fan_in) overriding mu_init/sigma_init.
    ``sigma_init`` is relative: σ₀ = sigma_init/√fan_in. ``reset = "zero"``, ``reset_delay = false``,
    ``readout = "count"`` train in the convention that NIR exports exactly (``mesu-snn export``)."""
    kind: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64])       # mlp
    channels: list[int] = field(default_factory=lambda: [8, 16])  # conv (input channels prepended)
    kernel_size: int = 3
    beta: float = 0.9
    threshold: float = 1.0
    reset: str = "subtract"
    reset_delay: bool = True             # True: the reset lands one step after the spike (snnTorch)
    surrogate: str = "fast_sigmoid"
    readout: str = "membrane"
    mu_init: float = 1.0
    sigma_init: float = 0.5
    init: str | None = None              # None: mu_init/sigma_init; "authors" | "library"
    activation: str = "relu"             # ann
    bias: bool | None = None             # None: the model's default (ann: False, spiking: True)

    def validate(self, p="model"):
        _choice(f"{p}.kind", self.kind, MODEL_KINDS)
        self.hidden = _int_list(f"{p}.hidden", self.hidden, 1, 0)
        self.channels = _int_list(f"{p}.channels", self.channels, 1, 1)
        _int(f"{p}.kernel_size", self.kernel_size, 1)
        self.beta = _float(f"{p}.beta", self.beta, 0.0, False, 1.0)
        self.threshold = _float(f"{p}.threshold", self.threshold, 0.0, True)
        _choice(f"{p}.reset", self.reset, RESETS)
        _bool(f"{p}.reset_delay", self.reset_delay)
        _choice(f"{p}.surrogate", self.surrogate, SURROGATES)
        _choice(f"{p}.readout", self.readout, READOUTS)
        self.mu_init = _float(f"{p}.mu_init", self.mu_init, 0.0)
        self.sigma_init = _float(f"{p}.sigma_init", self.sigma_init, 0.0, True)
        if self.init is not None:
            _choice(f"{p}.init", self.init, INITS)
        _choice(f"{p}.activation", self.activation, ACTIVATIONS)
        if self.bias is not None:
            _bool(f"{p}.bias", self.bias)


@dataclass
class RuleConfig:
    """``[rule]``: ``name`` and the rule's hyperparameters (see :func:`mesu_snn.rules.make_rule`)."""
    name: str = "mesu"
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self, p="rule"):
        _choice(f"{p}.name", self.name, tuple(RULES))
        known = hyperparameters(self.name)          # from the rule's own constructor and bounds
        for k, v in list(self.params.items()):
            if k not in known:
                raise _err(f"{p}.{k}", f"unknown hyperparameter for rule {self.name!r} "
                           f"(known: {', '.join(sorted(known))})")
            if k == "per_layer":
                self._validate_per_layer(f"{p}.{k}", v, known)
                continue
            if k == "sigma_prior" and v == "init" and self.name in ("mesu", "mesu_online"):
                continue                    # each layer's prior σ is its initial σ (rules/mesu.py)
            self.params[k] = _rule_number(f"{p}.{k}", k, v, known[k][1])

    def _validate_per_layer(self, p, v, known):
        """``per_layer = {"layers.1" = {memory = 150000}}``: a table of tables of the rule's own
        numeric hyperparameters (which layer each pattern matches is checked when the rule is built)."""
        if not isinstance(v, dict) or not v:
            raise _err(p, f"must be a table of layer tables, e.g. {{\"layers.1\" = {{memory = 150000}}}}, got {v!r}")
        for pat, hp in v.items():
            if not isinstance(hp, dict) or not hp:
                raise _err(f"{p}.{pat}", f"must be a non-empty table of hyperparameters, got {hp!r}")
            for k, x in list(hp.items()):
                if k not in known or k == "per_layer":
                    raise _err(f"{p}.{pat}.{k}", f"unknown hyperparameter for rule {self.name!r}")
                if k == "clamp_grad" and x == 0:
                    continue                # no clamp for this layer (build_rule)
                hp[k] = _rule_number(f"{p}.{pat}.{k}", k, x, known[k][1])


def _rule_number(path: str, k: str, v, bound):
    """A rule hyperparameter checked against its bound (one home of the bounds: mesu_snn.bounds, via
    Rule.bounds); a float where the bound is not an integer or a choice."""
    try:
        check_number(k, v, bound)
    except ValueError:
        raise _err(path, f"must be {describe(bound)}, got {v!r}") from None
    return float(v) if not isinstance(bound, tuple) and not BOUNDS[bound][4] else v


@dataclass
class ScheduleConfig:
    """``[schedule]``: Monte-Carlo samples, evaluation and checkpoint cadence, device."""
    train_samples: int = 4               # M for Bayesian rules (others run in mean mode, M = 1)
    eval_samples: int = 8                # M at evaluation (Bayesian model average)
    eval_every: int = 0                  # updates; 0 = only after each task
    checkpoint_every: int = 100          # updates; 0 = only at the end
    eval_batch_size: int = 256
    eval_average: str = "probs"          # probs: argmax mean softmax; log_probs: mean log-softmax (authors)
    last_k: int = 3
    ood: bool = True                     # OOD AUROC on a never-seen pixel/address permutation
    device: str = "cpu"
    threads: int | None = None           # torch.set_num_threads (None: torch's default)
    chance_patience: int = 3             # diverged: the just-learned task at chance at K task ends in a row (0: off)
    max_abs_parameter: float = 1e4       # diverged: a |μ| or σ above this (or non-finite, or σ <= 0)

    def validate(self, p="schedule"):
        _int(f"{p}.train_samples", self.train_samples, 1)
        _int(f"{p}.eval_samples", self.eval_samples, 1)
        _int(f"{p}.eval_every", self.eval_every, 0)
        _int(f"{p}.checkpoint_every", self.checkpoint_every, 0)
        _int(f"{p}.eval_batch_size", self.eval_batch_size, 1)
        _choice(f"{p}.eval_average", self.eval_average, EVAL_AVERAGES)
        _int(f"{p}.last_k", self.last_k, 1)
        _bool(f"{p}.ood", self.ood)
        _choice(f"{p}.device", self.device, DEVICES)
        _int(f"{p}.threads", self.threads, 1, allow_none=True, hi=4096)
        _int(f"{p}.chance_patience", self.chance_patience, 0)
        self.max_abs_parameter = _float(f"{p}.max_abs_parameter", self.max_abs_parameter, 0.0, True)


# -- memory ------------------------------------------------------------------------------

def _fmt_bytes(n: float) -> str:
    for unit, k in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.3g} {unit}"
    return f"{n:.0f} B"


def available_memory() -> int | None:
    """Physical memory of this machine in bytes (None if the OS does not say)."""
    import os
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def estimate_memory(cfg: "RunConfig") -> dict[str, int]:
    """Rough peak bytes of one training update and of one evaluation batch (float32), from the
    sizes alone: Monte-Carlo weight draws (ε, w, its gradient: 3 tensors per sample), the
    activations of every layer at every time step (currents, membranes, spikes, gradients: 4),
    and for the evaluation the (M, test samples, classes) outputs the last one collects."""
    m, e, sch = cfg.model, cfg.encoder, cfg.schedule
    c, h, w = SAMPLE_SHAPES[cfg.data.dataset]
    n_classes = DATASET_CLASSES[cfg.data.dataset]
    n_in, T = c * h * w, (1 if m.kind == "ann" else e.num_steps)
    if m.kind == "conv":
        chans = [c, *m.channels]
        weights = sum(a * b * m.kernel_size ** 2 for a, b in zip(chans, chans[1:])) + chans[-1] * h * w * n_classes
        units = h * w * sum(chans) + n_classes
    else:
        sizes = [n_in, *m.hidden, n_classes]
        weights = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
        units = sum(sizes)
    bayesian = RULES[cfg.rule.name].bayesian
    m_train, m_eval = (sch.train_samples, sch.eval_samples) if bayesian else (1, 1)
    n_test = cfg.data.test_per_task or TEST_SIZES[cfg.data.dataset]
    tasks = cfg.stream.n_tasks or -(-n_classes // (cfg.stream.classes_per_task or 2))
    if cfg.stream.kind != "permuted":
        n_test = min(n_test, TEST_SIZES[cfg.data.dataset])
    else:
        n_test *= tasks
    f = 4
    return {"train": f * m_train * (3 * weights + 4 * cfg.stream.batch_size * T * units),
            "evaluation": f * m_eval * (3 * weights + 4 * sch.eval_batch_size * T * units + n_test * n_classes),
            "weights": f * weights, "samples_train": m_train, "samples_evaluation": m_eval}


def check_memory(cfg: "RunConfig", available: int | None = None) -> None:
    """Refuse, before any data is loaded, a configuration whose training update or evaluation
    would need more memory than the machine has (the estimate is in the message)."""
    available = available_memory() if available is None else available
    if not available:
        return
    est = estimate_memory(cfg)
    for part, fields_ in (("train", "schedule.train_samples, stream.batch_size"),
                          ("evaluation", "schedule.eval_samples, schedule.eval_batch_size")):
        need = est[part]
        if need > available:
            what = "a training update" if part == "train" else "an evaluation batch"
            raise ConfigError(
                f"config: {what} would need about {_fmt_bytes(need)} ({need:.3g} bytes: "
                f"{est['samples_' + part]} weight samples of {_fmt_bytes(est['weights'])} of weights, model "
                f"{cfg.model.kind} {cfg.model.hidden if cfg.model.kind != 'conv' else cfg.model.channels}, "
                f"{cfg.encoder.num_steps} time steps), more than the {_fmt_bytes(available)} of memory of this "
                f"machine; lower {fields_} or the model size")


def warn_unused_samples(cfg: "RunConfig") -> None:
    """A :class:`ConfigWarning` per ``schedule.train_samples`` / ``schedule.eval_samples`` set
    (to other than its default) for a mean-mode rule (sgd, adam, ewc, si, sgd_online): those
    rules train and evaluate the mean network, one pass with w = μ, so the field is unused.
    Called once, when the configuration is validated (loaded), not per step."""
    rule = RULES[cfg.rule.name]
    if rule.bayesian:
        return
    bayes = ", ".join(n for n, c in RULES.items() if c.bayesian)
    default = ScheduleConfig()
    for name, when in (("train_samples", "per update"), ("eval_samples", "at evaluation")):
        v, d = getattr(cfg.schedule, name), getattr(default, name)
        if v != d:
            warnings.warn(ConfigWarning(
                f"config field schedule.{name} = {v} is unused: rule {cfg.rule.name!r} trains and evaluates the "
                f"mean network (w = μ, one pass, no weight samples {when}); only the Bayesian rules ({bayes}) draw "
                f"Monte-Carlo weight samples. Remove the field (default {d}) or pick a Bayesian rule"), stacklevel=4)


SECTIONS = {"data": DataConfig, "stream": StreamConfig, "encoder": EncoderConfig, "model": ModelConfig,
            "rule": RuleConfig, "schedule": ScheduleConfig}


@dataclass
class RunConfig:
    """A whole run: ``seed`` plus the six sections."""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rule: RuleConfig = field(default_factory=RuleConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def validate(self) -> "RunConfig":
        _int("seed", self.seed, 0, hi=SEED_MAX)
        for name in SECTIONS:
            getattr(self, name).validate(name)
        # cross-field checks
        st, n_classes = self.stream, DATASET_CLASSES[self.data.dataset]
        if st.kind != "permuted":
            if st.classes_per_task > n_classes:
                raise _err("stream.classes_per_task", f"must be <= {n_classes} ({self.data.dataset} has {n_classes} "
                           f"classes), got {st.classes_per_task}")
            fixed = -(-n_classes // st.classes_per_task)
            if st.n_tasks is not None and st.n_tasks != fixed:
                raise _err("stream.n_tasks", f"a {st.kind} stream has one task per {st.classes_per_task} classes, so "
                           f"{fixed} tasks for {n_classes} classes; n_tasks = {st.n_tasks} cannot be honoured: remove "
                           "it or change classes_per_task")
        events = self.data.dataset in EVENT_DATASETS
        if self.encoder.kind == "frames" and not events:
            raise _err("encoder.kind", f"'frames' needs event data (data.dataset = 'nmnist' or 'shd'), got dataset "
                       f"{self.data.dataset!r}")
        if events and self.encoder.kind != "frames":
            raise _err("encoder.kind", f"{self.data.dataset} holds events: use 'frames', got {self.encoder.kind!r}")
        if self.encoder.transforms and not events:
            raise _err("encoder.transforms", f"Tonic transforms take event data (nmnist, shd), got dataset "
                       f"{self.data.dataset!r}")
        if self.model.kind == "ann" and self.encoder.kind not in ("standardized", "current"):
            raise _err("encoder.kind", f"model.kind 'ann' takes static inputs: use 'standardized' or 'current', "
                       f"got {self.encoder.kind!r}")
        if self.encoder.kind == "rate" and self.encoder.gain > 1.0:
            raise _err("encoder.gain", f"a rate code's gain scales a probability: must be <= 1, got {self.encoder.gain}")
        warn_unused_samples(self)
        check_memory(self)
        return self

    def to_dict(self) -> dict:
        d = {"seed": self.seed}
        for name in SECTIONS:
            sec = getattr(self, name)
            if name == "rule":
                d[name] = {"name": sec.name, **sec.params}
            else:
                d[name] = asdict(sec)
        return d


def _section(cls, path: str, raw: Any):
    if not isinstance(raw, dict):
        raise _err(path, f"must be a table ([{path}]), got {type(raw).__name__}")
    if cls is RuleConfig:
        raw = dict(raw)
        if "name" not in raw:
            raise _err(f"{path}.name", f"is required ({', '.join(RULES)})")
        name = raw.pop("name")
        return RuleConfig(name=name, params=raw)
    names = {f.name for f in fields(cls)}
    for k in raw:
        if k not in names:
            raise _err(f"{path}.{k}", f"unknown field (known: {', '.join(sorted(names))})")
    return cls(**raw)


def parse_config(raw: dict) -> RunConfig:
    """A plain dict (as from TOML) -> validated :class:`RunConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a table of sections")
    for k in raw:
        if k != "seed" and k not in SECTIONS:
            raise _err(k, f"unknown section or field (known: seed, {', '.join(SECTIONS)})")
    if "rule" not in raw:
        raise _err("rule", "the [rule] table is required")
    kw = {name: _section(cls, name, raw[name]) for name, cls in SECTIONS.items() if name in raw}
    cfg = RunConfig(seed=raw.get("seed", 0), **kw)
    return cfg.validate()


#: largest configuration file read (a real one is about 1 KB)
MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run configuration. Errors name the file and the field."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} not found")
    if path.is_dir():
        raise IsADirectoryError(f"config file {path} is a directory")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size} bytes, larger than any run configuration (at most {MAX_CONFIG_BYTES})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e})") from None
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: invalid TOML ({type(e).__name__}: {str(e)[:300]})") from None
    try:
        return parse_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# -- writing ------------------------------------------------------------------------------

_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_key(k: str) -> str:
    """A bare key where TOML allows one, else a quoted one (``"layers.1"``: a dot would nest)."""
    return k if k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k) else _toml_value(str(k))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):      # a TOML basic string: \\, \" and every control character escaped
        return '"' + "".join(_TOML_ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7f else ch)
                             for ch in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):                       # an inline table (encoder.transforms entries)
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(cfg: RunConfig) -> str:
    """The configuration as TOML text (``None`` fields are left out: they mean the default)."""
    d = cfg.to_dict()
    lines = [f"seed = {d.pop('seed')}"]
    for name, sec in d.items():
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in sec.items() if v is not None]
    return "\n".join(lines) + "\n"
