"""A fixed-point numpy model of a netx network on Loihi: Lava's bit-accurate CUBA LIF
(``lava.proc.lif.models.PyLifModelBitAcc``) behind Lava's bit-accurate Dense synapse
(``lava.proc.dense.models.PyDenseModelBitAcc``), written from their documented integer
update, to predict the chip's output spikes for integer inputs.

One step t, every layer in order (a layer's spikes reach the next layer's synapse in the same
step; the synapse hands them on one step later)::

    a_in      = A                    the synapse's buffer: Σ_j W_ij·s_j from step t−1 (0 at t = 0)
    A         = Σ_j W_ij·s_j(t)      s: the previous layer's spikes at t (binary) or the integer input
    u         = trunc(u·(4096 − iDecay)/4096) + a_in·2⁶        wrapped to 24 bits, as Lava does
    v         = clip(trunc(v·(4096 − vDecay)/4096) + u + bias·2⁶, ±(2²³ − 1))
    s(t)      = v > vThMant·2⁶;  v ← 0 where s(t)

``trunc`` rounds toward zero (Lava: sign(x)·(|x| >> 12)). netx re-expresses each stored
weight matrix as an 8-bit mantissa and an exponent (``optimize_weight_bits``) that give back
exactly the stored integers for weights in [−256, 254], so A = Σ W·s on the stored integers.

Timing: the output of an L-layer network at step t + L answers the input at step t; before
input arrives each layer integrates only its bias. Our float network with the same timing is
``spiking_forward(model, x, layer_delay=1)`` (:mod:`mesu_snn.export.stages`); its neurons must be
``LIF(reset="zero", reset_delay=False)`` with ``v_leak = v_reset = 0`` (the spike compare is
``v > θ`` on both sides). With β = 1 (``vDecay = 0``) every membrane is an integer number of
weight steps and the float network equals this model spike for spike; with β < 1 Loihi
truncates the decayed membrane to 2⁻⁶ of a weight step, so the two membranes differ by less
than ``2⁻⁶/(1 − β)`` weight steps (:func:`membrane_bound`) and the spikes agree except where a
float membrane lies that close to the threshold.

Checked against Lava itself (lava-nc 0.10 + lava-dl 0.6 on Python 3.10, ``netx.hdf5.Network``
run with ``Loihi2SimCfg(select_tag="fixed_pt")``): the same output spikes at the same steps for
an IF MLP, a leaky MLP with biases and a leaky conv net with folded pooling
(``tests/test_export_netx.py``, when MESU_SNN_LAVA_PYTHON is set). Not checked on a chip.

What is counted, not modelled beyond Lava's code: u wraps (``wraps``), v clips (``clips``), and
activations outside int16 (``a_overflow``: Lava types the LIF's input port as 16-bit; whether a
chip saturates or wraps there is not documented in the code we read). Not modelled: refractory
delay (netx writes refDelay = 1, which Lava's LIF ignores), axonal delays. Conv layers are
computed as torch's cross-correlation of the stored (out, in, kh, kw) weights, which is what
Lava's Conv process computes from netx's re-ordered kernel (checked by the Lava run above).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .netx import DECAY_UNITY, STATE_SHIFT, ChipLayer, read_netx

__all__ = ["FixedRun", "run_fixed", "membrane_bound", "STATE_BITS"]

STATE_BITS = 24
_MAX = 2 ** (STATE_BITS - 1)


def _trunc_decay(x: np.ndarray, decay: int) -> np.ndarray:
    """trunc(x·(4096 − decay)/4096), rounding toward zero, in int64."""
    p = x * np.int64(DECAY_UNITY - decay)
    return np.sign(p) * (np.abs(p) >> 12)


@dataclass
class FixedRun:
    """Output of :func:`run_fixed`: ``spikes`` bool (T, B, out) of the last layer; with
    ``record`` the spikes and membranes v (int64, 2⁶ per weight step) of every layer."""

    spikes: np.ndarray
    layer_spikes: list = field(default_factory=list)
    layer_v: list = field(default_factory=list)
    wraps: int = 0
    clips: int = 0
    a_overflow: int = 0


def run_fixed(layers_or_path, x, steps: int | None = None, record: bool = False,
              realisation: int | None = None) -> FixedRun:
    """Run a netx network (a path, or :func:`~mesu_snn.export.netx.loihi_layers`' list) on
    integer inputs x (T, in) or (T, B, in) for ``steps`` steps (default T; inputs after T are
    0). Returns a :class:`FixedRun` (spikes (steps, B, out))."""
    layers: list[ChipLayer] = read_netx(layers_or_path, realisation) if isinstance(layers_or_path, (str, Path)) \
        else layers_or_path
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer) and not np.issubdtype(x.dtype, np.bool_):
        if not np.all(x == np.round(x)):
            raise ValueError("the chip takes integer inputs (binary spikes or graded integers); got non-integer values")
    x = x.astype(np.int64)
    in_shape = tuple(layers[0].in_shape) or (int(layers[0].weight.shape[1]),)
    if x.ndim == 1 + len(in_shape):
        x = x[:, None]
    if x.ndim != 2 + len(in_shape) or tuple(x.shape[2:]) != in_shape:
        raise ValueError(f"expected input (T, B, {', '.join(map(str, in_shape))}) or without B, got {x.shape}")
    t_in, b = x.shape[:2]
    steps = t_in if steps is None else int(steps)
    shapes = [tuple(L.out_shape) if L.kind == "conv" else (int(L.weight.shape[0]),) for L in layers]
    w = [L.weight.astype(np.int64) for L in layers]
    bias = [_bias(L, shp) for L, shp in zip(layers, shapes)]
    vth = [np.int64(L.v_th) << STATE_SHIFT for L in layers]
    buf = [np.zeros((b, *shp), np.int64) for shp in shapes]
    u = [np.zeros((b, *shp), np.int64) for shp in shapes]
    v = [np.zeros((b, *shp), np.int64) for shp in shapes]
    run = FixedRun(spikes=np.zeros((steps, b, *shapes[-1]), bool))
    if record:
        run.layer_spikes = [np.zeros((steps, b, *shp), bool) for shp in shapes]
        run.layer_v = [np.zeros((steps, b, *shp), np.int64) for shp in shapes]
    for t in range(steps):
        s_prev = x[t] if t < t_in else np.zeros((b, *in_shape), np.int64)
        for k, L in enumerate(layers):
            a_in = buf[k]
            buf[k] = _synapse(L, w[k], s_prev)
            run.a_overflow += int(((a_in > 32767) | (a_in < -32768)).sum())
            uk = _trunc_decay(u[k], DECAY_UNITY) + (a_in << STATE_SHIFT)   # iDecay = 4096 (read_netx checks)
            wrapped = np.where(uk > _MAX, uk - 2 * _MAX, uk)
            wrapped = np.where(wrapped <= -_MAX, uk + 2 * _MAX, wrapped)
            run.wraps += int((wrapped != uk).sum())
            u[k] = wrapped
            vk = _trunc_decay(v[k], L.v_decay) + u[k] + bias[k]
            clipped = np.clip(vk, -_MAX + 1, _MAX - 1)
            run.clips += int((clipped != vk).sum())
            s = clipped > vth[k]
            if record:
                run.layer_v[k][t] = clipped
                run.layer_spikes[k][t] = s
            v[k] = np.where(s, 0, clipped)
            s_prev = s.astype(np.int64)
        run.spikes[t] = s_prev.astype(bool)
    return run


def _bias(L: ChipLayer, shape: tuple) -> np.ndarray:
    """bias·2⁶ broadcast over a layer's neurons (one per output channel for conv)."""
    if L.bias is None:
        return np.zeros(shape, np.int64)
    b = L.bias.astype(np.int64) << STATE_SHIFT
    return b.reshape(-1, *([1] * (len(shape) - 1))) if len(shape) > 1 else b


def _synapse(L: ChipLayer, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Σ W·s for the layer's spikes s (B, ...): dense (flattened in (C, H, W) order, as netx's
    flatten) or conv (torch's cross-correlation in float64: exact for these integers)."""
    if L.kind == "dense":
        return s.reshape(s.shape[0], -1) @ w.T
    import torch
    y = torch.nn.functional.conv2d(torch.from_numpy(s.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                                   stride=L.conv["stride"], padding=L.conv["padding"], dilation=L.conv["dilation"],
                                   groups=L.conv["groups"])
    return np.rint(y.numpy()).astype(np.int64)


def membrane_bound(v_decay: int) -> float:
    """Largest |Loihi membrane − float membrane| in weight steps for a neuron with this vDecay
    fed the same inputs, while neither has spiked differently: Σ_k β^k·2⁻⁶ = 2⁻⁶/(1 − β)
    (0 when vDecay = 0: no truncation)."""
    if v_decay == 0:
        return 0.0
    beta = 1.0 - v_decay / DECAY_UNITY
    return 2.0 ** -STATE_SHIFT / (1.0 - beta)
