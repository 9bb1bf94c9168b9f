"""Intel Loihi 2 through Lava's ``netx`` HDF5 format: the mean network on the chip's integer
grid, σ and sampled realisations beside it.

What the chip computes (Lava's bit-accurate CUBA LIF, ``lava.proc.lif.models.PyLifModelBitAcc``,
with the parameters ``lava.lib.dl.netx.hdf5.Network`` derives from a file; everything an integer,
state 24 bits)::

    a_t = Σ_j W_ij·s_j(t−1)                        Dense synapse: one step of delay
    u_t = trunc((4096 − iDecay)·u_{t−1} / 4096) + a_t·2⁶
    v_t = trunc((4096 − vDecay)·v_{t−1} / 4096) + u_t + bias·2⁶
    spike where v_t > vThMant·2⁶, then v_t ← 0

(``trunc`` rounds toward zero.) Our neuron ``v_t = β·v_{t−1} + W·s_t + b``, spike where
``v_t > θ``, reset to 0 at the spike's step (``LIF(reset="zero", reset_delay=False)``,
``v_leak = v_reset = 0``), maps onto it with an instantaneous synapse, ``iDecay = 4096``
(u_t = a_t·2⁶), and ``vDecay = round(4096·(1 − β))``. Both sides are linear in (W, b, θ) and
reset to 0, so every neuron's row can be divided by its threshold: per layer the weights
``W·g/θ`` (g: the LIF's ``input_scale``, folded in too) are put on the n-bit grid with one
scale ``s = max|W·g/θ| / (2^(n−1) − 1)``: ``weight = round(W·g/(θ·s))`` (8 bits: [−127, 127]),
``bias = round(b·g/(θ·s))``, ``vThMant = round(1/s)``. That is the whole quantisation; the
per-neuron thresholds of a model become one threshold per layer, as Lava's LIF holds it.

Lava's ranges (docstring of ``PyLifModelBitAcc``): vDecay 12-bit unsigned (0…4095, so β ≥
1/4096), bias mantissa 13-bit signed (−4096…4095; netx applies it with ``bias_exp = 6``),
vThMant 17-bit unsigned (≤ 131071); netx's ``optimize_weight_bits`` takes weights in
[−256, 254] and re-expresses them exactly as an 8-bit mantissa and an exponent.

File schema (what ``netx.hdf5.Network`` reads, written from its reader ``hdf5.py`` and
``utils.NetDict``; names, types and shapes are checked in ``tests/test_export_netx.py``, and
lava-dl 0.6's ``hdf5.Network`` loads and runs these files there when a Python 3.10 with Lava is
given, see :mod:`~mesu_snn.export.loihi_fixed`)::

    layer/<i>/type          bytes 'S10' (1,)   b"dense" | b"conv" | b"flatten" | b"input" (a conv
                                               net's first entry: only its shape [C, H, W])
    layer/<i>/shape         int64 (k,)         dense: [out]; conv: [C, H, W] (the reader reverses it)
    layer/<i>/inFeatures, outFeatures   int64 ()   (dense)
    layer/<i>/weight        int32 (out, in)    dense; conv: (out, in/groups, kh, kw) as torch
    layer/<i>/bias          int32 (out,)       only for layers with a bias
    layer/<i>/stride, padding, dilation  int64 (2,) (H, W) and groups int64 ()   (conv)
    layer/<i>/neuron/type   bytes 'S10' (1,)   b"CUBA"
    layer/<i>/neuron/iDecay, vDecay, vThMant, refDelay   int64 ()   (4096, 4096·(1−β), …, 1)
    layer/<i>/neuron/gradedSpike   bool ()     False (binary output spikes)
    simulation/Ts           int64 ()           1 (one chip step per model step)

    mesu_snn/                attrs: format="mesu_snn netx", mesu_snn_version, model (JSON spec),
                             convention (this text's first paragraph, short), bits, n_layers,
                             realisations, realisation_seed, and any caller metadata
    mesu_snn/layer/<k>/      the k-th synaptic layer; attrs: name (the model's layer), scale s, bits,
                             netx_layer (its i in layer/<i>)
        weight_mu, bias_mu          float32   the trained means μ (model units)
        weight_sigma, bias_sigma    float32   σ on the chip grid: σ·g/(θ·s), in weight LSBs
        threshold, input_scale      float32 (out,)  θ and g that were folded into the row
    mesu_snn/realisations/<r>/layer/<k>/weight, bias   int32   w = μ + σε (seeded), on the
                             same grid as synaptic layer k (same scale, neuron and threshold, so a
                             chip swaps only the weight matrix), saturated at ±(2^(n−1) − 1);
                             attrs: clipped (how many saturated)

netx reads only ``layer/`` (and Lava ignores ``simulation/``); the reader followed is lava-dl's
``netx/hdf5.py``. A conv net's first entry is a shape-only ``input`` (no ``neuron`` group): from
lava-dl 0.3.0 (Sep 2022) to 0.6.0, ``Network._create`` takes ``self.input_shape`` from such an
entry (``elif 'shape' in layer_config[i]``) and builds no block for it, so it adds no neuron and
no delay (an ``input`` entry *with* a ``neuron`` group would become a spiking ``Input`` block).
lava-dl 0.2.0 (Mar 2022) has neither that branch nor ``input_shape=``: it builds an ``Input``
block from every ``input`` entry (reading its ``neuron``) and takes a conv's input shape from
the block before it, so there a conv net cannot load (dense ones might: not run with that
version); no option writes the extra input neuron layer that reader would need. ``mesu_snn/`` is ours, for
chips with stochastic synapses and to trace the file back to the model. Inputs: binary spikes
as they are; integer (graded) inputs need ``hdf5.Network(net_config=path,
input_message_bits=N)``. Time: each Dense delays by one step, so an L-layer network's output at
step t + L answers the input at step t; :func:`~mesu_snn.export.loihi_fixed.run_fixed` models
that, :func:`~mesu_snn.export.stages.spiking_forward` with ``layer_delay=1`` is our float
network with the same delay.

Conv layers are written as netx ``conv`` blocks. netx has no pooling block, so an average
pooling k×k is folded into the layer after it: that layer reads the unpooled map with every
weight repeated over a k×k block and divided by k² (a conv then has stride k·s and padding k·p;
a dense layer after the flatten reads all C·H·W positions). This is exact when H and W are
multiples of k (refused otherwise), so a :class:`~mesu_snn.SpikingConvNet` maps; it costs weight
memory (k² times the next layer's weights) and the 1/k² goes into the grid's scale.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import ChipConstraintError, FileFormatError
from ..neurons import LIF
from ..filecheck import stamp_h5_digest
from ..runs.atomic import atomic_path
from ..synapses import BayesConv2d, BayesianLayer, BayesLinear
from .stages import AvgPool, Flatten, SpikingSequential, model_stages, stage_shapes

__all__ = ["ChipLayer", "DECAY_UNITY", "VDECAY_MAX", "VTH_MAX", "BIAS_MIN", "BIAS_MAX", "WEIGHT_MIN", "WEIGHT_MAX",
           "loihi_layers", "netx_incompatibilities", "to_netx", "read_netx", "chip_float_model",
           "ChipReadout"]

DECAY_UNITY = 4096           #: Lava's decays are on a 12-bit scale: factor (4096 − d)/4096
VDECAY_MAX = 4095            #: dv is 12-bit unsigned (0…4095) in PyLifModelBitAcc
VTH_MAX = 2 ** 17 - 1        #: vth is 17-bit unsigned in PyLifModelBitAcc
BIAS_MIN, BIAS_MAX = -4096, 4095   #: bias_mant 13-bit signed
WEIGHT_MIN, WEIGHT_MAX = -256, 254  #: what netx.utils.optimize_weight_bits takes without clipping
STATE_SHIFT = 6              #: activation, bias (netx: bias_exp = 6) and threshold are shifted by 6 bits
FORMAT = "mesu_snn netx"


@dataclass
class ChipLayer:
    """One synaptic layer with its CUBA neurons, on the chip's integer grid.

    ``weight`` int32 (out, in) or (out, in/groups, kh, kw); ``bias`` int32 (out,) or None;
    ``v_decay``, ``v_th`` ints; ``scale``: weight·scale = μ·g/θ (model units, row-normalised by
    the threshold); ``sigma_weight``/``sigma_bias``: σ on the same grid (float32)."""

    kind: str
    weight: np.ndarray
    bias: np.ndarray | None
    v_decay: int
    v_th: int
    scale: float
    bits: int
    name: str = ""
    out_shape: tuple = ()
    in_shape: tuple = ()
    conv: dict = field(default_factory=dict)
    sigma_weight: np.ndarray | None = None
    sigma_bias: np.ndarray | None = None
    weight_mu: np.ndarray | None = None
    bias_mu: np.ndarray | None = None
    threshold: np.ndarray | None = None
    input_scale: np.ndarray | None = None
    flatten: bool = False        #: a netx 'flatten' entry precedes this layer
    pool: int = 0                #: k of an average pooling folded into this layer's weights (0: none)
    clipped: int = 0             #: weights saturated at ±(2^(n−1) − 1) (realisations on a given grid)

    @property
    def beta(self) -> float:
        """The leak per step the chip applies: 1 − vDecay/4096."""
        return 1.0 - self.v_decay / DECAY_UNITY


def _np(v) -> np.ndarray:
    return (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(np.float64)


def _per_neuron(v, n: int, what: str, where: str, problems: list) -> np.ndarray | None:
    """v as (n,) per output neuron (channel for conv), or None after noting why not."""
    a = _np(v)
    if a.ndim == 0:
        return np.full(n, float(a))
    flat = a.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return np.full(n, float(flat[0]))
    if a.shape[0] == n and (a.ndim == 1 or np.all(a.reshape(n, -1) == a.reshape(n, -1)[:, :1])):
        return a.reshape(n, -1)[:, 0].copy()
    problems.append(f"{where}: {what} varies within a channel (shape {tuple(a.shape)}); Loihi folds only one value per "
                    "output neuron/channel into the weights")
    return None


def _pairs(model: nn.Module):
    """[(layer, lif, qualified name, chip in_shape, out_shape, flatten before, pool)] and the
    problems of the chain's structure for netx. ``pool``: (k, (C, H, W)) of an average pooling
    right before this layer, to fold into its weights (netx has no pooling block)."""
    stages, input_shape = model_stages(model)
    shapes = stage_shapes(stages, input_shape)
    names = {id(m): n for n, m in model.named_modules()}
    pairs, problems, i, in_shape = [], [], 0, tuple(input_shape)
    flatten_before, pool = False, None
    while i < len(stages):
        st = stages[i]
        if isinstance(st, BayesianLayer):
            nxt = stages[i + 1] if i + 1 < len(stages) else None
            name = names.get(id(st), f"stage{i}")
            if not isinstance(nxt, LIF):
                problems.append(f"{name}: a synaptic layer must be followed by LIF neurons on Loihi (a CUBA block)")
                i += 1
                continue
            pairs.append((st, nxt, name, in_shape, shapes[i + 1], flatten_before, pool))
            flatten_before, pool = False, None
            in_shape = shapes[i + 1]
            i += 2
            continue
        if isinstance(st, AvgPool):
            k = st.kernel_size
            if pool is not None:
                problems.append(f"stage {i}: two poolings in a row; only one folds into the next layer")
            elif len(in_shape) != 3 or in_shape[1] % k or in_shape[2] % k:
                problems.append(f"stage {i}: average pooling {k}×{k} of a {in_shape} map; it folds into the next "
                                f"layer (netx has no pooling block) only when H and W are multiples of {k}")
            else:
                pool = (k, tuple(in_shape))
            i += 1                                   # the chip's next layer reads the unpooled map
            continue
        if isinstance(st, Flatten):
            flatten_before = True
            in_shape = (int(np.prod(in_shape)),)
        else:
            problems.append(f"stage {i} ({type(st).__name__}) has no netx block")
            in_shape = shapes[i]
        i += 1
    if pool is not None:
        problems.append("average pooling after the last layer: nothing to fold it into")
    return pairs, tuple(input_shape), problems


def _fold_pool(w: np.ndarray, layer: BayesianLayer, pool, conv: dict, name: str, problems: list) -> np.ndarray:
    """The weights that read the unpooled map: an average pooling k×k (stride k) followed by
    ``layer`` equals one layer with every weight repeated over a k×k block and divided by k²
    (conv: stride k·s, padding k·p; exact when H, W are multiples of k)."""
    k, (c, h, wd) = pool
    if isinstance(layer, BayesConv2d):
        if tuple(layer.stride) != (1, 1) or tuple(layer.dilation) != (1, 1):
            problems.append(f"{name}: pooling folds only into a conv with stride 1 and dilation 1")
            return w
        conv.update(stride=(k, k), padding=tuple(k * p for p in layer.padding))
        return np.repeat(np.repeat(w, k, axis=2), k, axis=3) / k ** 2
    out = w.shape[0]
    w4 = w.reshape(out, c, h // k, wd // k)
    return (np.repeat(np.repeat(w4, k, axis=2), k, axis=3) / k ** 2).reshape(out, c * h * wd)


def _lif_problems(lif: LIF, where: str) -> tuple[list[str], list[str]]:
    """(hard, soft): what the file cannot hold, and where the chip runs a different neuron."""
    hard, soft = [], []
    beta = _np(lif.beta).reshape(-1)
    if beta.size and not np.all(beta == beta[0]):
        hard.append(f"{where}: per-neuron β (Lava's LIF holds one vDecay per layer); train with one β per layer")
    elif beta.size and round(DECAY_UNITY * (1 - float(beta[0]))) > VDECAY_MAX:
        hard.append(f"{where}: β = {float(beta[0]):g} needs vDecay = 4096 > {VDECAY_MAX} (12-bit dv): the smallest "
                    "β Loihi's leak gives is 1/4096")
    for attr, label in (("v_leak", "v_leak"), ("v_reset", "v_reset")):
        if np.any(_np(getattr(lif, attr)) != 0):
            hard.append(f"{where}: {label} ≠ 0 (Loihi's CUBA rests at 0 and resets to 0)")
    if lif.reset != "zero" or lif.reset_delay:
        soft.append(f"{where}: reset={lif.reset!r}, reset_delay={lif.reset_delay} (Loihi resets v to 0 at the spike's "
                    "step: train with reset='zero', reset_delay=False)")
    return hard, soft


def loihi_layers(model: nn.Module, bits: int = 8, strict: bool = False, scales: list[float] | None = None,
                 target: str = "Loihi 2 (Lava netx)") -> list[ChipLayer]:
    """The model's mean network (w = μ) as integer CUBA layers (see the module docstring).

    Raises :class:`~mesu_snn.errors.ChipConstraintError` listing every problem that the file
    cannot hold; with ``strict`` also the neuron conventions where the chip would run a
    different network than the trained one (reset, readout), which otherwise only warn.
    ``scales``: use these per-layer grid scales instead of fitting them (the realisations are
    put on the μ network's grid this way)."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8] for Loihi (8-bit signed weight mantissas), got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    pairs, input_shape, hard = _pairs(model)
    soft = []
    if getattr(model, "readout", "count") != "count":
        soft.append(f"readout={model.readout!r}: the chip's output is the last layer's spikes (train with "
                    "readout='count')")
    layers = []
    for k, (layer, lif, name, in_shape, out_shape, flat, pool) in enumerate(pairs):
        h, s = _lif_problems(lif, name)
        hard += h
        soft += s
        if isinstance(layer, BayesConv2d):
            if isinstance(layer.padding, str):
                hard.append(f"{name}: padding={layer.padding!r}; netx conv needs integer padding")
                continue
        n_out = layer.weight_mu.shape[0]
        theta = _per_neuron(lif.threshold, n_out, "threshold", name, hard)
        gain = _per_neuron(lif.input_scale, n_out, "input_scale", name, hard)
        if theta is None or gain is None:
            continue
        if np.any(gain <= 0):
            hard.append(f"{name}: input_scale must be > 0 to fold into the weights")
            continue
        row = gain / theta                                   # fold g and 1/θ into each output row
        shape_w = (-1,) + (1,) * (layer.weight_mu.dim() - 1)
        w = _np(layer.weight_mu) * row.reshape(shape_w)
        sig_w = _np(layer.weight_sigma) * row.reshape(shape_w)
        b = None if layer.bias_mu is None else _np(layer.bias_mu) * row
        conv = {}
        if isinstance(layer, BayesConv2d):
            conv = dict(stride=tuple(layer.stride), padding=tuple(layer.padding), dilation=tuple(layer.dilation),
                        groups=int(layer.groups))
        if pool is not None:                                 # σ folds the same way (the k² copies share a draw)
            w, sig_w = _fold_pool(w, layer, pool, conv, name, hard), _fold_pool(sig_w, layer, pool, dict(conv), name, [])
        m = float(np.abs(w).max()) if w.size else 0.0
        scale = (m / qmax if m > 0 else 1.0 / qmax) if scales is None else float(scales[k])
        q = np.round(w / scale)
        clipped = 0
        if scales is not None:
            clipped = int((np.abs(q) > qmax).sum())
            q = np.clip(q, -qmax, qmax)
        vth = int(round(1.0 / scale))
        if vth < 1:
            hard.append(f"{name}: the threshold is below half a weight step (vThMant would be 0): the largest weight "
                        f"is {m:.3g}× the threshold; use more bits or smaller weights")
        if vth > VTH_MAX:
            hard.append(f"{name}: vThMant = {vth} > {VTH_MAX} (17-bit threshold): the weights are tiny next to the "
                        "threshold; use fewer bits or larger weights")
        bq = None
        if b is not None:
            bq = np.round(b / scale)
            if bq.min() < BIAS_MIN or bq.max() > BIAS_MAX:
                hard.append(f"{name}: bias on the weight grid spans [{int(bq.min())}, {int(bq.max())}], outside the "
                            f"13-bit bias mantissa [{BIAS_MIN}, {BIAS_MAX}]")
        beta = float(_np(lif.beta).reshape(-1)[0])
        kind = "conv" if isinstance(layer, BayesConv2d) else "dense"
        sig_w = (sig_w / scale).astype(np.float32)
        sig_b = None if b is None else (_np(layer.bias_sigma) * row / scale).astype(np.float32)
        layers.append(ChipLayer(
            kind=kind, weight=q.astype(np.int32), bias=None if bq is None else bq.astype(np.int32),
            v_decay=min(int(round(DECAY_UNITY * (1 - beta))), VDECAY_MAX), v_th=max(vth, 1), scale=scale, bits=bits,
            name=name, out_shape=tuple(out_shape), in_shape=tuple(in_shape), conv=conv, sigma_weight=sig_w,
            sigma_bias=sig_b, weight_mu=_np(layer.weight_mu).astype(np.float32),
            bias_mu=None if layer.bias_mu is None else _np(layer.bias_mu).astype(np.float32),
            threshold=theta.astype(np.float32), input_scale=gain.astype(np.float32), flatten=flat,
            pool=0 if pool is None else pool[0], clipped=clipped))
    if not pairs and not hard:
        hard.append("no synaptic layer to export")
    if hard or (strict and soft):
        raise ChipConstraintError(target, hard + (soft if strict else []))
    if soft:
        warnings.warn(f"{target} runs a different neuron than the trained one ({'; '.join(soft)}); the file holds "
                      "the chip's network", stacklevel=2)
    return layers


def netx_incompatibilities(model: nn.Module, bits: int = 8) -> list[str]:
    """Every reason the model cannot be written as netx, or would run differently on Loihi
    (reset, readout); empty when the export is exact up to quantisation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loihi_layers(model, bits, strict=True)
    except ChipConstraintError as e:
        return e.violations
    return []


# ---------------------------------------------------------------- writing
def _str(group, key: str, value: str) -> None:
    group.create_dataset(key, (1,), "S10", [value.encode("ascii")])


def _write_layers(f, layers: list[ChipLayer]) -> list[int]:
    """Write ``layer/<i>``; returns the netx index of each synaptic layer."""
    i, index = 0, []
    if layers and layers[0].kind == "conv":             # the reader takes a conv net's input shape from here
        g = f.create_group("layer/0")
        _str(g, "type", "input")
        g.create_dataset("shape", data=np.array(layers[0].in_shape, dtype=np.int64))
        i = 1
    for L in layers:
        if L.flatten:
            g = f.create_group(f"layer/{i}")
            _str(g, "type", "flatten")
            g.create_dataset("shape", data=np.array([int(np.prod(L.in_shape)), 1, 1], dtype=np.int64))
            i += 1
        index.append(i)
        g = f.create_group(f"layer/{i}")
        i += 1
        _str(g, "type", L.kind)
        if L.kind == "dense":
            g.create_dataset("shape", data=np.array([L.weight.shape[0]], dtype=np.int64))
            g.create_dataset("inFeatures", data=np.int64(L.weight.shape[1]))
            g.create_dataset("outFeatures", data=np.int64(L.weight.shape[0]))
        else:
            g.create_dataset("shape", data=np.array(L.out_shape, dtype=np.int64))
            g.create_dataset("inChannels", data=np.int64(L.in_shape[0]))
            g.create_dataset("outChannels", data=np.int64(L.weight.shape[0]))
            g.create_dataset("kernelSize", data=np.array(L.weight.shape[2:], dtype=np.int64))
            for key in ("stride", "padding", "dilation"):
                g.create_dataset(key, data=np.array(L.conv[key], dtype=np.int64))
            g.create_dataset("groups", data=np.int64(L.conv["groups"]))
        g.create_dataset("weight", data=L.weight.astype(np.int32))
        if L.bias is not None:
            g.create_dataset("bias", data=L.bias.astype(np.int32))
        n = g.create_group("neuron")
        _str(n, "type", "CUBA")
        n.create_dataset("iDecay", data=np.int64(DECAY_UNITY))
        n.create_dataset("vDecay", data=np.int64(L.v_decay))
        n.create_dataset("vThMant", data=np.int64(L.v_th))
        n.create_dataset("refDelay", data=np.int64(1))
        n.create_dataset("gradedSpike", data=np.bool_(False))
    return index


def _realisation_weights(model: nn.Module, layers: list[ChipLayer], k: int, seed: int, bits: int):
    """K sampled weight sets w = μ + σε on the μ network's grid: [(layers, clipped per layer)]."""
    from .realisations import sample_realisations
    out = []
    for m in sample_realisations(model, k, seed=seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rl = loihi_layers(m, bits, scales=[L.scale for L in layers])
        out.append((rl, [R.clipped for R in rl]))
    return out


def to_netx(model: nn.Module, path, bits: int = 8, realisations: int = 0, seed: int = 0, force: bool = False,
            strict: bool = False, steps: int | None = None, metadata: dict | None = None) -> Path:
    """Write the model's mean network as a Lava netx HDF5 file (schema: the module docstring),
    atomically; returns the path.

    ``bits``: weight bits (8: integers in [−127, 127]). ``realisations=K``: also K sampled
    weight sets w = μ + σε (seed ``seed``) under ``mesu_snn/realisations``. ``strict``: refuse
    (instead of warning) a network whose neurons the chip runs differently (reset, readout).
    ``steps``: written as ``simulation/tSample``. Raises ChipConstraintError before writing
    anything when the network does not fit; FileExistsError if ``path`` exists and not ``force``."""
    import h5py

    from .._version import __version__
    from ..models import model_spec
    layers = loihi_layers(model, bits, strict=strict)
    reals = _realisation_weights(model, layers, realisations, seed, bits) if realisations else []
    meta = {"format": FORMAT, "mesu_snn_version": __version__, "model": json.dumps(model_spec(model)),
            "convention": "Lava CUBA LIF, iDecay=4096 (instantaneous synapse), vDecay=round(4096*(1-beta)); per "
                          "layer weight*scale = mu*input_scale/threshold, vThMant=round(1/scale); one step of delay "
                          "per layer", "bits": bits, "n_layers": len(layers), "realisations": int(realisations),
            "realisation_seed": int(seed)}
    meta.update(metadata or {})
    with atomic_path(path, force) as tmp:
        with h5py.File(tmp, "w") as f:
            index = _write_layers(f, layers)
            sim = f.create_group("simulation")
            sim.create_dataset("Ts", data=np.int64(1))
            if steps is not None:
                sim.create_dataset("tSample", data=np.int64(steps))
            ours = f.create_group("mesu_snn")
            for k, v in meta.items():
                ours.attrs[k] = v
            for i, L in enumerate(layers):
                g = ours.create_group(f"layer/{i}")
                g.attrs.update(name=L.name, scale=float(L.scale), bits=bits, netx_layer=index[i])
                g.create_dataset("weight_mu", data=L.weight_mu)
                g.create_dataset("weight_sigma", data=L.sigma_weight)
                g.create_dataset("threshold", data=L.threshold)
                g.create_dataset("input_scale", data=L.input_scale)
                if L.bias is not None:
                    g.create_dataset("bias_mu", data=L.bias_mu)
                    g.create_dataset("bias_sigma", data=L.sigma_bias)
            for r, (rl, clipped) in enumerate(reals):
                for i, (R, c) in enumerate(zip(rl, clipped)):
                    g = ours.create_group(f"realisations/{r}/layer/{i}")
                    g.attrs["clipped"] = c
                    g.create_dataset("weight", data=R.weight.astype(np.int32))
                    if R.bias is not None:
                        g.create_dataset("bias", data=np.clip(R.bias, BIAS_MIN, BIAS_MAX).astype(np.int32))
            stamp_h5_digest(f)     # a root attribute: Lava's reader ignores it, ours checks it
    return Path(path)


# ---------------------------------------------------------------- reading
def _decode(ds) -> str:
    v = ds[0] if ds.shape else ds[()]
    return v.decode("ascii") if isinstance(v, bytes) else str(v)


def read_netx(path, realisation: int | None = None) -> list[ChipLayer]:
    """The CUBA layers of a netx file, read along the paths Lava's reader takes (``type`` as
    ASCII, ``weight``/``bias`` as integers, neuron scalars). ``realisation=k`` swaps in the
    k-th sampled weight set of ``mesu_snn/realisations``. ValueError naming the file for a
    file that is not HDF5, not netx, or uses blocks or neurons outside dense/conv/flatten CUBA."""
    from ..filecheck import check_h5, open_h5
    path = Path(path)
    f = open_h5(path, "netx")
    with f:
        check_h5(f, path)              # declared sizes; the SHA-256 of the tree when the file has one (ours)
        if "layer" not in f:
            raise ValueError(f"{path}: HDF5 file but not a netx network (no 'layer' group; top-level keys "
                             f"{sorted(f.keys())})")
        ours = f.get("mesu_snn")
        layers, in_shape, flat = [], None, False
        try:
            for i in range(len(f["layer"])):
                g = f[f"layer/{i}"]
                kind = _decode(g["type"])
                if kind in ("flatten", "input"):
                    if kind == "input":
                        in_shape = tuple(int(s) for s in g["shape"][()])
                    else:
                        flat, in_shape = True, (int(np.prod(in_shape)),) if in_shape else in_shape
                    continue
                if kind not in ("dense", "conv"):
                    raise ValueError(f"layer {i} has type {kind!r}; supported: dense, conv, flatten")
                nt = _decode(g["neuron/type"])
                if nt not in ("CUBA", "LOIHI"):
                    raise ValueError(f"layer {i} has neuron type {nt!r}; supported: CUBA")
                if int(g["neuron/iDecay"][()]) != DECAY_UNITY:
                    raise ValueError(f"layer {i}: iDecay = {int(g['neuron/iDecay'][()])}; only the instantaneous "
                                     f"synapse (iDecay = {DECAY_UNITY}) is modelled")
                w = g["weight"][()].astype(np.int64)
                shape = tuple(int(s) for s in g["shape"][()])
                if kind == "dense" and w.ndim == 1:
                    w = w.reshape(int(np.prod(shape)), -1)
                bias = g["bias"][()].astype(np.int64) if "bias" in g else None
                conv = {}
                if kind == "conv":
                    conv = {k: tuple(int(v) for v in np.broadcast_to(g[k][()], (2,)))
                            for k in ("stride", "padding", "dilation")}
                    conv["groups"] = int(g["groups"][()])
                scale, name, k = 1.0, "", len(layers)
                if ours is not None and f"layer/{k}" in ours:
                    scale = float(ours[f"layer/{k}"].attrs["scale"])
                    name = str(ours[f"layer/{k}"].attrs["name"])
                if realisation is not None:
                    key = f"realisations/{realisation}/layer/{k}"
                    if ours is None or key not in ours:
                        raise ValueError(f"no realisation {realisation} (mesu_snn/{key} missing)")
                    w = ours[key]["weight"][()].astype(np.int64)
                    if bias is not None and "bias" in ours[key]:
                        bias = ours[key]["bias"][()].astype(np.int64)
                if in_shape is None and kind == "dense":
                    in_shape = (int(w.shape[1]),)
                layers.append(ChipLayer(kind=kind, weight=w, bias=bias, v_decay=int(g["neuron/vDecay"][()]),
                                        v_th=int(g["neuron/vThMant"][()]), scale=scale, bits=0, name=name,
                                        out_shape=shape, in_shape=in_shape or (), conv=conv, flatten=flat))
                in_shape, flat = shape, False
        except (KeyError, TypeError, IndexError, OSError) as e:   # OSError: h5py's read of a damaged dataset
            raise FileFormatError(f"{path}: damaged netx file: {type(e).__name__}: {e}") from None
        except ValueError as e:
            raise FileFormatError(f"{path}: {e}") from None
    if not layers:
        raise ValueError(f"{path}: netx file without dense or conv layers")
    return layers


# ---------------------------------------------------------------- our float model of the chip
def chip_float_model(layers_or_path, input_shape: tuple | None = None) -> SpikingSequential:
    """Our float network with the chip's parameters, in chip units: BayesLinear μ = the
    integer weights (σ = the grid σ, unused in mean mode), LIF(β = 1 − vDecay/4096,
    threshold = vThMant, reset="zero", reset_delay=False). Run it with
    ``spiking_forward(net.mean_mode(), x, layer_delay=1)`` for the chip's timing; it then
    differs from the fixed-point model only by Loihi's truncation of the decayed membrane
    (none when β = 1, see :mod:`mesu_snn.export.loihi_fixed`)."""
    layers = read_netx(layers_or_path) if isinstance(layers_or_path, (str, Path)) else layers_or_path
    stages = []
    for L in layers:
        if L.flatten:
            stages.append(Flatten(3))                       # netx flattens a conv map in (C, H, W) order
        if L.kind == "conv":
            out, inp = L.weight.shape[0], L.weight.shape[1] * L.conv["groups"]
            lin = BayesConv2d(inp, out, tuple(L.weight.shape[2:]), stride=L.conv["stride"], padding=L.conv["padding"],
                              dilation=L.conv["dilation"], groups=L.conv["groups"], bias=L.bias is not None)
        else:
            out, inp = L.weight.shape
            lin = BayesLinear(inp, out, bias=L.bias is not None)
        with torch.no_grad():
            lin.weight_mu.copy_(torch.from_numpy(L.weight.astype(np.float32)))
            sw = L.sigma_weight if L.sigma_weight is not None else np.full(L.weight.shape, 1e-6, np.float32)
            lin.weight_sigma.copy_(torch.from_numpy(np.maximum(sw, 1e-6).astype(np.float32)))
            if L.bias is not None:
                lin.bias_mu.copy_(torch.from_numpy(L.bias.astype(np.float32)))
                sb = L.sigma_bias if L.sigma_bias is not None else np.full(L.bias.shape, 1e-6, np.float32)
                lin.bias_sigma.copy_(torch.from_numpy(np.maximum(sb, 1e-6).astype(np.float32)))
        stages += [lin, LIF(beta=1.0 - L.v_decay / DECAY_UNITY, threshold=float(L.v_th), reset="zero",
                            reset_delay=False)]
    shape = input_shape or (tuple(layers[0].in_shape) if layers[0].in_shape else (int(layers[0].weight.shape[1]),))
    return SpikingSequential(stages, shape)


class ChipReadout(nn.Module):
    """A chip-units float network (:func:`chip_float_model`) run with the chip's timing (one
    step of delay per layer, the input followed by L zero steps so the last answer arrives),
    output spike counts (M, B, C): the prediction the chip reads, for accuracy evaluation."""

    def __init__(self, net: SpikingSequential):
        super().__init__()
        self.net = net
        self.n_layers = sum(isinstance(s, BayesianLayer) for s in net.stages)

    def forward(self, x: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        from .stages import spiking_forward
        pad = torch.zeros(self.n_layers, *x.shape[1:], dtype=x.dtype, device=x.device)
        return spiking_forward(self.net, torch.cat([x, pad]), samples=samples, generator=generator,
                               layer_delay=1).sum(1)
