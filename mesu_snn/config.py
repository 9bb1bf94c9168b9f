"""Run configuration: TOML file -> validated dataclasses (and back).

A run is described by seven parts: ``seed`` and the tables ``[data]``, ``[stream]``,
``[encoder]``, ``[model]``, ``[rule]`` and ``[schedule]``. Every field is checked on load;
an error names the field, e.g. ``config field stream.n_tasks: must be an integer >= 1, got 0``.
Unknown fields are errors too (a typo never silently falls back to a default). Example::

    seed = 0

    [data]
    dataset = "mnist"          # digits | mnist | fashion_mnist | nmnist
    root = "../shared/data"    # optional; default $MESU_SNN_DATA, else ./data
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

    [model]
    kind = "mlp"               # mlp | conv | ann (non-spiking BayesMLP)
    hidden = [64]

    [rule]
    name = "mesu"              # mesu | bgd | sgd | adam | ewc | si
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import MesuError
from .functional.lif import RESETS
from .functional.surrogate import SURROGATES
from .models import ACTIVATIONS as _MODEL_ACTIVATIONS
from .models import READOUTS
from .synapses import INITS as _SYN_INITS
from .rules.registry import RULES, hyperparameters

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "RunConfig", "DataConfig", "StreamConfig", "EncoderConfig", "ModelConfig",
           "RuleConfig", "ScheduleConfig", "load_config", "parse_config", "dump_toml"]

DATASETS = ("digits", "mnist", "fashion_mnist", "nmnist")
STREAM_KINDS = ("permuted", "split", "class_incremental")
BOUNDARIES = ("sharp", "blurred")
ENCODERS = ("current", "standardized", "rate", "latency", "frames")
MODEL_KINDS = ("mlp", "conv", "ann")
INITS = tuple(_SYN_INITS)
ACTIVATIONS = tuple(_MODEL_ACTIVATIONS)
EVAL_AVERAGES = ("probs", "log_probs")
DEVICES = ("cpu", "cuda", "auto")


class ConfigError(MesuError, ValueError):
    """A configuration value is missing, of the wrong type or out of range (names the field)."""


def _err(path: str, msg: str) -> ConfigError:
    return ConfigError(f"config field {path}: {msg}")


# -- field checkers -----------------------------------------------------------------------

def _int(path, v, lo=None, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(path, f"must be an integer{'' if lo is None else f' >= {lo}'}, got {v!r}")
    if lo is not None and v < lo:
        raise _err(path, f"must be an integer >= {lo}, got {v!r}")
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
    n_tasks: int = 5                     # permuted
    classes_per_task: int = 2            # split / class_incremental
    boundary: str = "sharp"
    transition: float = 0.2              # blurred: width of the mixing window (share of a task)
    epochs_per_task: int = 1
    batch_size: int = 16
    seed: int | None = None              # permutations/sample order; default: the run seed

    def validate(self, p="stream"):
        _choice(f"{p}.kind", self.kind, STREAM_KINDS)
        _int(f"{p}.n_tasks", self.n_tasks, 1)
        _int(f"{p}.classes_per_task", self.classes_per_task, 1)
        _choice(f"{p}.boundary", self.boundary, BOUNDARIES)
        self.transition = _float(f"{p}.transition", self.transition, 0.0, True, 1.0)
        _int(f"{p}.epochs_per_task", self.epochs_per_task, 1)
        _int(f"{p}.batch_size", self.batch_size, 1)
        _int(f"{p}.seed", self.seed, 0, allow_none=True)


@dataclass
class EncoderConfig:
    """``[encoder]``: static inputs -> spikes/currents (T, B, ...), or events -> frames.
    ``standardized``: signed currents gain·(x − mean)/std with the training set's pixel mean/std
    (the MESU authors' input), for T steps; for ``model.kind = "ann"`` the (B, features) inputs."""
    kind: str = "current"
    num_steps: int = 10                  # T (for frames: the number of time bins)
    gain: float = 2.0                    # current: input scale; rate: spike-probability gain
    tau: float = 5.0                     # latency
    threshold: float = 0.01              # latency
    linear: bool = False                 # latency
    duration_us: float | None = None     # frames: fixed window [0, duration) in µs

    def validate(self, p="encoder"):
        _choice(f"{p}.kind", self.kind, ENCODERS)
        _int(f"{p}.num_steps", self.num_steps, 1)
        self.gain = _float(f"{p}.gain", self.gain, 0.0)
        self.tau = _float(f"{p}.tau", self.tau, 0.0, True)
        self.threshold = _float(f"{p}.threshold", self.threshold, 0.0, True, 1.0, True)
        _bool(f"{p}.linear", self.linear)
        self.duration_us = _float(f"{p}.duration_us", self.duration_us, 0.0, True, allow_none=True)


@dataclass
class ModelConfig:
    """``[model]``: a Bayesian spiking MLP or conv net, or a non-spiking ``ann`` (BayesMLP with
    ``activation``, ``bias``); input and output sizes come from the data. ``init``: a named
    initialisation (``"authors"``: μ ~ U(±4/√fan_in), σ₀ = 2/√fan_in) overriding mu_init/sigma_init."""
    kind: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64])       # mlp
    channels: list[int] = field(default_factory=lambda: [8, 16])  # conv (input channels prepended)
    kernel_size: int = 3
    beta: float = 0.9
    threshold: float = 1.0
    reset: str = "subtract"
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
        _choice(f"{p}.surrogate", self.surrogate, SURROGATES)
        _choice(f"{p}.readout", self.readout, READOUTS)
        self.mu_init = _float(f"{p}.mu_init", self.mu_init, 0.0)
        self.sigma_init = _float(f"{p}.sigma_init", self.sigma_init, 0.0, True)
        if self.init is not None:
            _choice(f"{p}.init", self.init, INITS)
        _choice(f"{p}.activation", self.activation, ACTIVATIONS)
        if self.bias is not None:
            _bool(f"{p}.bias", self.bias)


_BOUNDS = {">0": dict(lo=0.0, lo_open=True), ">=0": dict(lo=0.0), "[0,1]": dict(lo=0.0, hi=1.0),
           "[0,1)": dict(lo=0.0, hi=1.0, hi_open=True), "real": {}}


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
            bound = known[k][1]
            if isinstance(bound, tuple):
                _choice(f"{p}.{k}", v, bound)
            elif bound == "int>=1":
                _int(f"{p}.{k}", v, 1)
            else:
                self.params[k] = _float(f"{p}.{k}", v, **_BOUNDS[bound])


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
        _int(f"{p}.threads", self.threads, 1, allow_none=True)


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
        _int("seed", self.seed, 0)
        for name in SECTIONS:
            getattr(self, name).validate(name)
        # cross-field checks
        if self.encoder.kind == "frames" and self.data.dataset != "nmnist":
            raise _err("encoder.kind", f"'frames' needs event data (data.dataset = 'nmnist'), got dataset "
                       f"{self.data.dataset!r}")
        if self.data.dataset == "nmnist" and self.encoder.kind != "frames":
            raise _err("encoder.kind", f"N-MNIST holds events: use 'frames', got {self.encoder.kind!r}")
        if self.model.kind == "ann" and self.encoder.kind not in ("standardized", "current"):
            raise _err("encoder.kind", f"model.kind 'ann' takes static inputs: use 'standardized' or 'current', "
                       f"got {self.encoder.kind!r}")
        if self.encoder.kind == "rate" and self.encoder.gain > 1.0:
            raise _err("encoder.gain", f"a rate code's gain scales a probability: must be <= 1, got {self.encoder.gain}")
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
            raise _err(f"{path}.name", "is required (mesu, bgd, sgd, adam, ewc or si)")
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

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(cfg: RunConfig) -> str:
    """The configuration as TOML text (``None`` fields are left out: they mean the default)."""
    d = cfg.to_dict()
    lines = [f"seed = {d.pop('seed')}"]
    for name, sec in d.items():
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in sec.items() if v is not None]
    return "\n".join(lines) + "\n"
