"""Spike encoders: static inputs or event arrays -> float32 tensors (T, B, ...).

Each encoder is a small dataclass (Tonic style) whose work is done by a pure
function in this file. Static encoders take a float batch (B, ...) with values
in [0, 1] (use :func:`to_unit_interval` for uint8 images); randomness comes
only from an explicit ``generator`` or ``seed`` so equal seeds give equal spikes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import require

LATENCY_EPSILON = 1e-7  # same saturation constant as snntorch.spikegen.latency


def to_unit_interval(x: torch.Tensor) -> torch.Tensor:
    """uint8 images 0..255 -> float32 in [0, 1]; float input is returned as float32."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if not torch.is_floating_point(x):
        raise ValueError(f"expected uint8 or float input, got {x.dtype}")
    return x.to(torch.float32)


def standardization_stats(x_train: torch.Tensor) -> tuple[float, float]:
    """(mean, std) over every pixel of the training images, after :func:`to_unit_interval`
    (one scalar each, as the MESU authors' ``normalisation(..., "standardised")``;
    MNIST train: 0.1307, 0.3081)."""
    x = to_unit_interval(x_train)
    return float(x.mean()), float(x.std())


def standardize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Signed standardised inputs (x − mean)/std, float32, for images 0..255 or floats in
    [0, 1]; pass the *training* set's stats (:func:`standardization_stats`) for every split
    (the authors' code computes each split's own stats; for MNIST they differ by < 1%)."""
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    return (to_unit_interval(x) - mean) / std


def _check_steps(num_steps: int, name: str = "num_steps") -> int:
    ok = isinstance(num_steps, int | float | np.integer) and not isinstance(num_steps, bool)
    if not ok or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {num_steps!r}")
    return int(num_steps)


def _check_unit(x: torch.Tensor, who: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{who}: input must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{who}: input must be float in [0, 1], got dtype {x.dtype} (see to_unit_interval)")
    if x.dim() < 1:
        raise ValueError(f"{who}: input must have a batch dimension (B, ...), got a scalar")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"{who}: input values must lie in [0, 1], got range [{x.min().item():.4g}, {x.max().item():.4g}]"
        )
    return x


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        g = torch.Generator()
        g.manual_seed(int(seed))
        return g
    return generator


def rate_encode(
    x: torch.Tensor,
    num_steps: int,
    gain: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Bernoulli rate code: spike at each step with probability ``clamp(gain * x, 0, 1)``.

    x (B, ...) in [0, 1] -> spikes float32 {0, 1} of shape (num_steps, B, ...).
    """
    num_steps = _check_steps(num_steps)
    if not (gain >= 0 and math.isfinite(gain)):
        raise ValueError(f"gain must be finite and >= 0, got {gain}")
    x = _check_unit(x, "rate_encode")
    p = (x.to(torch.float32) * gain).clamp_(0.0, 1.0)
    p = p.unsqueeze(0).expand(num_steps, *p.shape)
    g = _generator(generator, seed)
    return torch.bernoulli(p.cpu(), generator=g).to(x.device) if g is not None else torch.bernoulli(p)


def latency_times(
    x: torch.Tensor,
    num_steps: int,
    tau: float = 5.0,
    threshold: float = 0.01,
    normalize: bool = True,
    linear: bool = False,
) -> torch.Tensor:
    """Real-valued spike times (in steps) of the latency code; brighter -> earlier.

    Log code: ``tau * ln(x / (x - threshold))`` (RC neuron charging to threshold),
    inputs clamped to ``threshold + 1e-7`` as in snntorch. Linear code:
    ``tau * (1 - x)`` clamped at ``tau * (1 - threshold)``. ``normalize`` rescales so
    an input at the threshold fires at step ``num_steps - 1`` (linear: tau = num_steps - 1;
    log: divide by the time of a saturated input), independent of the batch.
    """
    num_steps = _check_steps(num_steps)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    x = _check_unit(x, "latency_encode").to(torch.float32)
    if linear:
        tau_eff = float(num_steps - 1) if normalize else float(tau)
        return torch.clamp_max(tau_eff * (1.0 - x), tau_eff * (1.0 - threshold))
    xc = torch.clamp(x, min=threshold + LATENCY_EPSILON)
    t = tau * torch.log(xc / (xc - threshold))
    if normalize:
        t_max = tau * math.log((threshold + LATENCY_EPSILON) / LATENCY_EPSILON)
        t = t * ((num_steps - 1) / t_max)
    return t


def latency_encode(
    x: torch.Tensor,
    num_steps: int,
    tau: float = 5.0,
    threshold: float = 0.01,
    normalize: bool = True,
    linear: bool = False,
    clip: bool = True,
) -> torch.Tensor:
    """Time-to-first-spike code: at most one spike per input, brighter inputs fire earlier.

    x (B, ...) in [0, 1] -> float32 (num_steps, B, ...). Spike step = round(latency_times).
    Inputs below ``threshold`` do not fire when ``clip`` (else at the last step, as in
    snntorch); spikes whose step exceeds ``num_steps - 1`` are dropped (possible only
    when ``normalize=False``). Deterministic (no generator needed).
    """
    t = latency_times(x, num_steps, tau, threshold, normalize, linear)
    step = torch.round(t).long()
    keep = step <= num_steps - 1
    if clip:
        keep &= x >= threshold
    out = torch.zeros((num_steps, *x.shape), dtype=torch.float32, device=x.device)
    out.scatter_(0, step.clamp(0, num_steps - 1).unsqueeze(0), keep.to(torch.float32).unsqueeze(0))
    return out


def current_encode(x: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Constant-current code: x (B, ...) repeated -> float32 (num_steps, B, ...).

    Any finite value is accepted (it is an input current, not a probability).
    """
    num_steps = _check_steps(num_steps)
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise ValueError("current_encode: input must be a float tensor (B, ...)")
    if x.dim() < 1:
        raise ValueError("current_encode: input must have a batch dimension (B, ...)")
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError("current_encode: input contains NaN or inf")
    return x.to(torch.float32).unsqueeze(0).expand(num_steps, *x.shape).contiguous()


def events_to_frames(
    events: np.ndarray,
    sensor_size: tuple[int, int, int],
    n_time_bins: int,
    duration_us: float | None = None,
) -> np.ndarray:
    """One event array -> event counts (n_time_bins, P, H, W) via ``tonic.functional.to_frame_numpy``.

    Bins have equal width. With ``duration_us`` the window is [0, duration_us) for
    every recording (same time base across samples; later events dropped); without it
    the window spans the recording's own first to last event, and every event lands in
    a frame (unlike Tonic's ``n_time_bins``, whose floor-rounded bins can drop the tail).
    Sensors without ``y`` (e.g. SHD (700, 1, 1)) give H = 1.
    """
    to_frame_numpy = require("tonic.functional", "event frames").to_frame_numpy

    n_time_bins = _check_steps(n_time_bins, "n_time_bins")
    W, H, P = (int(s) for s in sensor_size)
    names = events.dtype.names or ()
    if "x" not in names or "t" not in names or "p" not in names:
        raise ValueError(f"events need fields x, t, p (Tonic structured array), got {names}")
    has_y = "y" in names
    if not has_y and H != 1:
        raise ValueError(f"events have no y field but sensor_size height is {H}")
    out = np.zeros((n_time_bins, P, H, W), dtype=np.float32)
    ev = events
    if duration_us is not None:
        if not duration_us > 0:
            raise ValueError(f"duration_us must be > 0, got {duration_us}")
        ev = ev[(ev["t"] >= 0) & (ev["t"] < duration_us)]
    if len(ev) == 0:
        return out
    if (ev["x"] < 0).any() or (ev["x"] >= W).any() or (has_y and ((ev["y"] < 0).any() or (ev["y"] >= H).any())):
        raise ValueError(f"event addresses outside sensor_size {sensor_size}")
    if (ev["p"] < 0).any() or (ev["p"] >= P).any():
        if P == 1:
            pass  # Tonic folds all polarities into one channel for single-polarity sensors
        else:
            raise ValueError(f"event polarities outside 0..{P - 1}")
    ev = ev.copy()  # tonic may overwrite p in place
    if np.any(np.diff(ev["t"]) < 0):
        ev = ev[np.argsort(ev["t"], kind="stable")]
    # Bin edges in exact integer arithmetic: times are scaled by n_time_bins so each bin
    # is `window` wide with integer edges (float edges make Tonic count boundary events
    # twice or drop them).
    if duration_us is not None:
        start, window = 0, duration_us
    else:
        start = ev["t"][0]
        window = ev["t"][-1] - start + 1  # +1 us: the last event falls inside the last bin
    ev["t"] = (ev["t"] - start) * n_time_bins
    frames = to_frame_numpy(
        ev,
        sensor_size=(W, H, P),
        time_window=window,
        start_time=0,
        # half a window of slack: Tonic floors (duration - window) / window
        end_time=(n_time_bins + 0.5) * window,
    )
    if len(frames) != n_time_bins:  # pragma: no cover - guards a Tonic behaviour change
        raise RuntimeError(f"tonic returned {len(frames)} frames, expected {n_time_bins}")
    out[:] = np.asarray(frames, dtype=np.float32).reshape(n_time_bins, P, H, W)
    return out


@dataclass(frozen=True)
class RateEncoder:
    """Bernoulli rate code; ``enc(x, generator=None, seed=None)`` -> (T, B, ...)."""

    num_steps: int
    gain: float = 1.0

    def __post_init__(self):
        _check_steps(self.num_steps)
        if not self.gain >= 0:
            raise ValueError(f"gain must be >= 0, got {self.gain}")

    def __call__(self, x, generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
        return rate_encode(x, self.num_steps, self.gain, generator=generator, seed=seed)


@dataclass(frozen=True)
class LatencyEncoder:
    """Time-to-first-spike code (see :func:`latency_encode`); ``enc(x)`` -> (T, B, ...)."""

    num_steps: int
    tau: float = 5.0
    threshold: float = 0.01
    normalize: bool = True
    linear: bool = False
    clip: bool = True

    def __post_init__(self):
        _check_steps(self.num_steps)
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")

    def __call__(self, x, generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
        # generator/seed accepted for a uniform encoder interface; the code is deterministic.
        return latency_encode(x, self.num_steps, self.tau, self.threshold, self.normalize, self.linear, self.clip)


@dataclass(frozen=True)
class CurrentEncoder:
    """Constant input current repeated over time; ``enc(x)`` -> (T, B, ...)."""

    num_steps: int

    def __post_init__(self):
        _check_steps(self.num_steps)

    def __call__(self, x, generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
        return current_encode(x, self.num_steps)


@dataclass(frozen=True)
class EventFrameEncoder:
    """Batch of event arrays -> event-count frames float32 (T, B, P, H, W).

    ``sensor_size`` is Tonic's (W, H, P); see :func:`events_to_frames` for binning.
    """

    sensor_size: tuple[int, int, int]
    n_time_bins: int
    duration_us: float | None = None

    def __post_init__(self):
        _check_steps(self.n_time_bins, "n_time_bins")
        if len(self.sensor_size) != 3 or any(int(s) < 1 for s in self.sensor_size):
            raise ValueError(f"sensor_size must be 3 positive ints (W, H, P), got {self.sensor_size}")
        if self.duration_us is not None and not self.duration_us > 0:
            raise ValueError(f"duration_us must be > 0, got {self.duration_us}")

    @property
    def num_steps(self) -> int:
        return self.n_time_bins

    def __call__(
        self, batch: Sequence[np.ndarray], generator: torch.Generator | None = None, seed: int | None = None
    ) -> torch.Tensor:
        if isinstance(batch, np.ndarray) and batch.dtype.names is not None:
            raise ValueError("EventFrameEncoder expects a list of event arrays (a batch), got one array")
        frames = [events_to_frames(ev, self.sensor_size, self.n_time_bins, self.duration_us) for ev in batch]
        if not frames:
            raise ValueError("EventFrameEncoder: empty batch")
        return torch.from_numpy(np.stack(frames, axis=1))


# ----------------------------------------------------------------- Tonic event transforms
#: Tonic transforms a config may name for event data: name -> {keyword: (check, default)}; a
#: default of ``...`` means required. Only these names and keywords are accepted (nothing is
#: evaluated); random transforms (DropEvent, ...) are left out so runs stay reproducible.
TONIC_TRANSFORMS = {
    "Denoise": {"filter_time": (">0", ...)},
    "Downsample": {"time_factor": (">0", 1.0), "spatial_factor": ("factor", 1.0)},
    "RefractoryPeriod": {"delta": (">0", ...)},
    "CropTime": {"min": (">=0", 0.0), "max": (">0", None)},
    "Decimation": {"n": ("int>=1", ...)},
    "MergePolarities": {},
    "ToFrame": {"n_time_bins": ("int>=1", None), "overlap": ("[0,1)", 0.0)},
}


def _tonic_value(where: str, check: str, v):
    num = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if check == "int>=1":
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: must be an integer >= 1, got {v!r}")
        return v
    if check == "factor":
        vals = list(v) if isinstance(v, list | tuple) else [v]
        if len(vals) not in (1, 2) or not all(isinstance(f, int | float) and not isinstance(f, bool)
                                              and 0 < f <= 1 for f in vals):
            raise ValueError(f"{where}: must be a number in (0, 1] or a list [x, y] of two, got {v!r}")
        return float(vals[0]) if len(vals) == 1 else tuple(float(f) for f in vals)
    lo_ok = {">0": lambda x: x > 0, ">=0": lambda x: x >= 0, "[0,1)": lambda x: 0 <= x < 1}[check]
    if not num or not lo_ok(v):
        need = {">0": "> 0", ">=0": ">= 0", "[0,1)": "in [0, 1)"}[check]
        raise ValueError(f"{where}: must be a number {need}, got {v!r}")
    return float(v)


def check_tonic_transforms(specs, num_steps: int) -> list[tuple[str, dict]]:
    """Validate a config's ``encoder.transforms``: a list of tables ``{name = "Denoise",
    filter_time = 10000}`` naming :data:`TONIC_TRANSFORMS`. Returns [(name, keyword arguments with
    defaults)]; ValueError naming the entry and keyword otherwise. ``ToFrame`` may only come last
    (it then bins the events instead of :func:`events_to_frames`); its ``n_time_bins`` must equal
    ``num_steps`` (default: num_steps)."""
    if not isinstance(specs, list | tuple):
        raise ValueError(f"transforms: must be a list of tables such as {{name = \"Denoise\", filter_time = 10000}}, "
                         f"got {specs!r}")
    out = []
    for i, spec in enumerate(specs):
        where = f"transforms[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"{where}: must be a table with a name, e.g. {{name = \"Denoise\", filter_time = 10000}}, "
                             f"got {spec!r}")
        name = spec["name"]
        if name not in TONIC_TRANSFORMS:
            raise ValueError(f"{where}.name: must be one of {', '.join(map(repr, TONIC_TRANSFORMS))}, got {name!r}")
        allowed = TONIC_TRANSFORMS[name]
        kw = {}
        for k, v in spec.items():
            if k == "name":
                continue
            if k not in allowed:
                known = ", ".join(allowed) or "none"
                raise ValueError(f"{where}.{k}: not a keyword of {name} here (accepted: {known})")
            kw[k] = None if v is None else _tonic_value(f"{where}.{k}", allowed[k][0], v)
        for k, (_, default) in allowed.items():
            if k not in kw:
                if default is ...:
                    raise ValueError(f"{where}.{k}: required by {name}")
                kw[k] = default
        if name == "ToFrame":
            if i != len(specs) - 1:
                raise ValueError(f"{where}: ToFrame turns events into frames, so it must come last")
            if kw["n_time_bins"] is None:
                kw["n_time_bins"] = num_steps
            elif kw["n_time_bins"] != num_steps:
                raise ValueError(f"{where}.n_time_bins: must equal encoder.num_steps ({num_steps}), got {kw['n_time_bins']}")
        if name == "CropTime" and kw["max"] is not None and kw["max"] <= kw["min"]:
            raise ValueError(f"{where}.max: must be > min ({kw['min']}), got {kw['max']}")
        out.append((name, kw))
    return out


def tonic_sensor_size(specs, sensor_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """The sensor size (W, H, P) after the event transforms ``specs`` (as checked by
    :func:`check_tonic_transforms`): Downsample shrinks W, H as it maps x -> floor(x·factor),
    MergePolarities leaves one polarity."""
    W, H, P = (int(s) for s in sensor_size)
    for name, kw in specs:
        if name == "Downsample":
            f = kw["spatial_factor"]
            fx, fy = (f, f) if not isinstance(f, tuple) else f
            W, H = int(math.floor((W - 1) * fx)) + 1, int(math.floor((H - 1) * fy)) + 1
        elif name == "MergePolarities":
            P = 1
    return W, H, P


def tonic_event_transforms(specs, sensor_size: tuple[int, int, int]):
    """(list of Tonic transform objects for the event-to-event steps, ToFrame keywords or None)."""
    T = require("tonic.transforms", "Tonic event transforms").__dict__
    steps, to_frame = [], None
    for name, kw in specs:
        if name == "ToFrame":
            to_frame = kw
        elif name == "CropTime":
            steps.append(T[name](min=kw["min"], max=kw["max"]))
        else:
            steps.append(T[name](**kw))
    return steps, to_frame


def tonic_frames(batch: Sequence[np.ndarray], specs, sensor_size: tuple[int, int, int], n_time_bins: int,
                 duration_us: float | None = None) -> torch.Tensor:
    """A batch of event arrays through the Tonic transforms ``specs`` (checked by
    :func:`check_tonic_transforms`), then binned into float32 frames (T, B, P, H, W): by Tonic's
    ``ToFrame(n_time_bins=T, overlap)`` if it ends the list (Tonic's bins), else by
    :func:`events_to_frames` on the transformed sensor size."""
    steps, to_frame = tonic_event_transforms(specs, sensor_size)
    out_size = tonic_sensor_size(specs, sensor_size)
    W, H, P = out_size
    frames = []
    for ev in batch:
        for step in steps:
            ev = step(ev)
        if to_frame is None:
            frames.append(events_to_frames(ev, out_size, n_time_bins, duration_us))
            continue
        tonic_t = require("tonic.transforms", "Tonic event transforms")
        if len(ev) == 0:
            frames.append(np.zeros((n_time_bins, P, H, W), dtype=np.float32))
            continue
        f = tonic_t.ToFrame(sensor_size=out_size, n_time_bins=to_frame["n_time_bins"], overlap=to_frame["overlap"])(ev)
        f = np.asarray(f, dtype=np.float32).reshape(-1, P, H, W)
        if len(f) != n_time_bins:        # guards a Tonic behaviour change
            raise RuntimeError(f"tonic ToFrame returned {len(f)} frames, expected {n_time_bins}")
        frames.append(f)
    if not frames:
        raise ValueError("tonic_frames: empty batch")
    return torch.from_numpy(np.stack(frames, axis=1))
