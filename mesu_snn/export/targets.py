"""Chip profiles: the constraints of each neuromorphic target, checked against a model before
anything is written (``mesu-snn export --target NAME``), and the export conventions each
target needs.

Every number carries its source in :attr:`Target.sources`; a constraint whose number we could
not trace to a document or to the vendor's own code is left out (None) and said so there.
SpiNNaker 2 has no profile: its neurons are software on ARM cores and we found no document
giving a fixed neuron model, weight width or per-core count to check against.

:func:`target_violations` lists every violation at once; :func:`check_target` raises them as
one :class:`~mesu_snn.errors.ChipConstraintError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn

from ..errors import ChipConstraintError
from ..neurons import LIF
from ..synapses import BayesConv2d, BayesianLayer
from .stages import AvgPool, Flatten, model_stages, stage_shapes

__all__ = ["Target", "TARGETS", "get_target", "target_violations", "check_target"]


@dataclass(frozen=True)
class Target:
    """One chip's constraints (None: not checked, see ``sources``)."""

    key: str
    name: str
    format: str                                 #: default export format
    formats: tuple = ("nir",)
    weight_bits: int | None = None              #: signed weight width
    max_inputs: int | None = None               #: input channels of the first layer
    max_outputs: int | None = None              #: neurons of the last layer
    max_hidden: int | None = None               #: all neurons but the output layer's
    max_neurons: int | None = None              #: per chip
    max_synapses: int | None = None             #: per chip
    max_layers: int | None = None               #: synaptic layers (one core each on DYNAP-CNN)
    core_memory: tuple = ()                     #: ((kernel, neuron, bias) words, …) per core (DYNAP-CNN)
    layer_kinds: tuple = ("dense", "conv")
    pooling: str = "none"                       #: "none"; "sum" (SumPool, 1/k² in the next layer); "fold" (into it)
    beta: str = "any"                           #: "any", "one" (IF only), "pow2" (1 − 2⁻ⁿ), "loihi" (1 − d/4096)
    resets: tuple = ("zero",)                   #: resets the neurons implement (at the spike's step)
    uniform: bool = False                       #: one β/threshold per layer
    dense_bias: bool = False                    #: dense layers must have a bias (the importer reads Affine only)
    nir_options: dict = field(default_factory=dict)   #: keyword arguments of to_nir for this target
    sources: dict = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{k}={getattr(self, k)}" for k in ("weight_bits", "max_inputs", "max_outputs", "max_hidden",
                                                      "max_neurons", "max_layers") if getattr(self, k) is not None]
        return ", ".join(parts + [f"beta={self.beta}", f"pooling={self.pooling}"])


TARGETS: dict[str, Target] = {
    "loihi2": Target(
        key="loihi2", name="Intel Loihi 2 (Lava netx)", format="netx", formats=("netx",), weight_bits=8,
        max_neurons=1_000_000, max_synapses=120_000_000, layer_kinds=("dense", "conv"), pooling="fold",
        beta="loihi", resets=("zero",), uniform=True,
        sources={
            "weight_bits": "lava-dl netx/utils.py optimize_weight_bits ('standard 8 bit signed weight matrix'); "
                           "lava proc/dense/models.py PyDenseModelBitAcc (weights precision=8)",
            "max_neurons": "Intel Loihi 2 technology brief as summarised by open-neuromorphic.org (Loihi 2 page): "
                           "'up to 1 million neurons and 120 million synapses' per chip, 128 neuron cores",
            "max_synapses": "same page as max_neurons",
            "per_core": "not checked: neurons per core depend on the compartment program; no per-core number sourced",
            "fan_in": "not checked: no documented limit found",
            "pooling": "lava-dl netx/hdf5.py raises NotImplementedError for 'pool' and 'average' blocks; mesu_snn "
                       "folds an average pooling into the next layer (export/netx.py), for maps whose H, W are "
                       "multiples of k",
            "beta": "lava proc/lif/models.py PyLifModelBitAcc: dv 12-bit unsigned, decay (4096 − dv)/4096",
            "uniform": "lava LIF process holds one du, dv and vth per population (netx: one neuron group per layer)",
            "resets": "PyLifModelBitAcc.reset_voltage sets v = 0 where a spike was emitted, in the same step",
        }),
    "xylo-audio": Target(
        key="xylo-audio", name="SynSense Xylo Audio 2 (SYNS61201)", format="nir", weight_bits=8, max_inputs=16,
        max_outputs=8, max_hidden=1000, layer_kinds=("dense",), pooling="none", beta="pow2",
        resets=("subtract",), uniform=False, nir_options={"legacy": True},
        sources={
            "max_hidden": "rockpool devices/xylo/syns61201/xylo_mapper.py mapper(max_hidden_neurons=1000, "
                          "'matching Xylo hardware')",
            "max_outputs": "same function: max_output_neurons=8",
            "weight_bits": "same file's docstring: weights int8, thresholds int16; XyloSim.from_specification: "
                           "int8 weight matrices",
            "max_inputs": "rockpool docs/devices/quick-xylo/deploy_to_xylo.ipynb, table of Xylo Audio 2 limits: "
                          "'Max. input channels 16' (also 'Max. hidden neurons 1000', 'Max. output neurons 8', "
                          "'Weight bit-depth 8'); docs/devices/xylo-overview.ipynb: XyloAudio 2 'Num. SNN input "
                          "channels 16' (rockpool commit 42cee1c, Dec 2025). Not checked from the same table: 15 "
                          "input spikes and 31 hidden spikes per step, fan-out 64, 2 input synapses per neuron",
            "beta": "rockpool nn/modules/torch/lif_torch.py bitshift_to_decay: decay = 1 − 1/2**dash (the leak is "
                    "a bit shift); deploy_to_xylo.ipynb: 'Bit-shift decay parameter bit-depth 4', 'Max. bit-shift "
                    "decay value 15', so n ≤ 15",
            "layer_kinds": "the mapper places LinearWeights only (input, recurrent, output matrices): no convolution",
            "resets": "Xylo subtracts: xylosim 0.1.3 (the C++ back-end of "
                      "rockpool's syns61201.XyloSim) src/v2/cpp/XyloIAFNeuron.cpp fires while v ≥ θ, v ← v − θ each "
                      "time, up to 31 spikes a step (MAX_NUM_SPIKES; outputs MAX_NUM_OUT_SPIKES = 1). Train Xylo nets "
                      "with reset='subtract': XyloSim runs the README digits net at 0.619 (ours 0.623) that way, "
                      "0.424 (ours 0.682) with reset='zero' (tests/test_export_nir.py test_xylosim_runs_the_readme_"
                      "xylo_network), so reset='subtract' (at the spike's step, reset_delay=False) is required",
            "synapse": "Xylo neurons have a synaptic current: input adds W to i, then i ← i − (i ≫ dash_syn), "
                       "v ← v − (v ≫ dash_mem) + i (XyloIAFNeuron::evolve), so dash_syn = 0 empties i before it "
                       "reaches v and there is no instantaneous synapse; dash_syn = 1 (half now, the rest over the "
                       "next steps) is the closest to ours and what the XyloSim test uses: not checked here",
            "nir": "rockpool 3.1 pins nir ≤ 1.0.4 (issue 15): legacy files. Its NIR import "
                   "(nn/modules/torch/nir.py) fails on every LIF node (reads node.tau_mem: AttributeError), and "
                   "rockpool.devices.xylo cannot be imported without samna (PyPI's samna 0.48.6 only pip-installs "
                   "the real package from gitlab.com); the XyloSim test quantises our file with rockpool's "
                   "global_quantize and runs xylosim.v2.XyloLayer as XyloSim.from_specification builds it",
        }),
    "speck": Target(
        key="speck", name="SynSense Speck / DYNAP-CNN", format="nir", weight_bits=8, max_layers=9,
        core_memory=((16384, 65536, 1024), (16384, 65536, 1024), (16384, 65536, 1024), (32768, 32768, 1024),
                     (32768, 32768, 1024), (65536, 16384, 1024), (65536, 16384, 1024), (16384, 16384, 1024),
                     (16384, 16384, 1024)),
        layer_kinds=("conv", "dense"), pooling="sum", beta="one", resets=("subtract",), uniform=True, dense_bias=True,
        nir_options={"legacy": True, "pool": "sum", "neuron": "IF", "uniform": True, "if_r": "step"},
        sources={
            "weight_bits": "sinabs backend/dynapcnn/discretize.py DYNAPCNN_WEIGHT_PRECISION_BITS = 8 (bias too), "
                           "DYNAPCNN_STATE_PRECISION_BITS = 16",
            "core_memory": "sinabs backend/dynapcnn/chips/dynapcnn.py get_constraints: weight memory 16/16/16/32/32/"
                           "64/64/16/16 Ki, neuron memory 64/64/64/32/32/16/16/16/16 Ki, bias 1024 per core, 9 cores; "
                           "counted here as raw weights and neurons (sinabs' memory_summary may round up: not read)",
            "max_layers": "sinabs dynapcnn.py get_constraints lists 9 cores; each synaptic layer takes one core",
            "beta": "sinabs discretize.py takes sl.IAF layers only: integrate-and-fire, no leak",
            "pooling": "dynapcnn.py: pooling is a per-destination sum pooling between cores",
            "resets": "the chip does either (dynapcnn.py: return_to_zero for MembraneReset, else subtract), but "
                      "the NIR route does not: sinabs/nir.py builds every IF as sl.IAFSqueeze, whose default "
                      "reset_fn is MembraneSubtract (sinabs/layers/iaf.py), so only reset='subtract' is "
                      "reproduced; min_v_mem = −θ becomes the chip's threshold_low (dynapcnn.py)",
            "dense": "sinabs backend/dynapcnn/dynapcnn_layer.py converts an nn.Linear to a Conv2d whose kernel "
                     "covers the whole input (convert_linear_to_conv); counted here as such a core",
            "dense_bias": "sinabs/nir.py _import_sinabs_module handles nir.Affine (nn.Linear) but not nir.Linear, "
                          "which a bias-free dense layer writes: train dense layers with a bias",
            "nir": "sinabs 3.1.3 pins nir ≤ 1.0.4 (its package metadata); sinabs/nir.py _import_sinabs_module "
                   "handles Affine, Conv1d/2d, LI, IF, LIF, SumPool2d, Flatten, Input, Output (no AvgPool2d, no "
                   "Linear); its from_nir "
                   "builds IAFSqueeze with a subtractive reset, multi-spikes (v ≥ θ) and min_v_mem = −θ, ignoring "
                   "IF r (sinabs/nir.py): train with reset='subtract', reset_delay=False to be reproduced",
        }),
}


def get_target(name: str) -> Target:
    key = str(name).lower().replace("_", "-")
    aliases = {"loihi": "loihi2", "loihi-2": "loihi2", "xylo": "xylo-audio", "xylo-audio2": "xylo-audio",
               "dynapcnn": "speck", "dynap-cnn": "speck"}
    key = aliases.get(key, key)
    if key not in TARGETS:
        extra = " (SpiNNaker 2 has no profile: no documented fixed constraints found)" if "spinnaker" in key else ""
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}{extra}")
    return TARGETS[key]


def _values(v) -> np.ndarray:
    return (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v, dtype=np.float64)).reshape(-1)


def _matching(sizes: list[tuple[int, int, int]], cores: tuple) -> bool:
    """Can every layer (kernel, neuron, bias) go on its own core? (bipartite matching)"""
    match: dict[int, int] = {}

    def place(i, seen):
        for c, (km, nm, bm) in enumerate(cores):
            k, n, b = sizes[i]
            if c in seen or k > km or n > nm or b > bm:
                continue
            seen.add(c)
            if c not in match or place(match[c], seen):
                match[c] = i
                return True
        return False
    return all(place(i, set()) for i in range(len(sizes)))


def target_violations(model: nn.Module, target: Target | str, bits: int | None = None) -> list[str]:
    """Every way ``model`` breaks ``target``'s constraints (empty: it fits)."""
    t = get_target(target) if isinstance(target, str) else target
    out: list[str] = []
    stages, input_shape = model_stages(model)
    shapes = stage_shapes(stages, input_shape)
    names = {id(m): n for n, m in model.named_modules()}
    layers = [(i, s) for i, s in enumerate(stages) if isinstance(s, BayesianLayer)]
    lifs = [(i, s) for i, s in enumerate(stages) if isinstance(s, LIF)]
    if bits is not None and t.weight_bits is not None and bits > t.weight_bits:
        out.append(f"--bits {bits}: {t.name} stores {t.weight_bits}-bit weights")
    for i, s in layers:
        kind = "conv" if isinstance(s, BayesConv2d) else "dense"
        if kind not in t.layer_kinds:
            out.append(f"{names.get(id(s), i)}: {kind} layers are not supported ({t.name} maps "
                       f"{'/'.join(t.layer_kinds)} only)")
        elif kind == "dense" and t.dense_bias and s.bias_mu is None:
            out.append(f"{names.get(id(s), i)}: a dense layer without bias is written as NIR Linear, which "
                       f"{t.name}'s importer does not read (train with bias=True)")
    for i, s in enumerate(stages):
        if isinstance(s, AvgPool) and t.pooling == "none":
            out.append(f"stage {i}: pooling ({s.kernel_size}×{s.kernel_size}) is not supported on {t.name}")
        elif not isinstance(s, (BayesianLayer, LIF, AvgPool, Flatten)):
            out.append(f"stage {i}: {type(s).__name__} has no counterpart on {t.name}")
    for i, lif in lifs:
        where = names.get(id(lif), f"stage {i}")
        beta = _values(lif.beta)
        if t.uniform and beta.size > 1 and not np.all(beta == beta[0]):
            # (per-neuron thresholds are folded into the weights on export; β cannot be)
            out.append(f"{where}: per-neuron β; {t.name} takes one β per layer")
        if t.beta == "one" and np.any(beta != 1.0):
            out.append(f"{where}: β = {beta[0]:g}; {t.name} runs integrate-and-fire neurons only (train with beta=1)")
        elif t.beta == "pow2":
            bad = [b for b in np.unique(beta) if b >= 1 or b <= 0 or
                   abs(b - (1 - 2.0 ** -round(-math.log2(1 - b)))) > 1e-6]
            if bad:
                n = min(15, max(1, round(-math.log2(1 - bad[0])))) if 0 < bad[0] < 1 else 1
                out.append(f"{where}: β = {bad[0]:g} is not of the form 1 − 2⁻ⁿ (the leak is a bit shift); the "
                           f"nearest is {1 - 2.0 ** -n:g} (n = {n})")
            elif np.any(beta > 1 - 2.0 ** -15 + 1e-12):
                out.append(f"{where}: β = {beta.max():g} = 1 − 2⁻ⁿ with n > 15 ({t.name}'s bit-shift decay is at "
                           f"most 15: the slowest leak is β = {1 - 2.0 ** -15:g})")
        elif t.beta == "loihi" and np.any(np.round(4096 * (1 - beta)) > 4095):
            out.append(f"{where}: β = {beta.min():g} < 1/4096 (Loihi's vDecay is 12-bit)")
        fixes = ([f"reset={t.resets[0]!r}"] if lif.reset not in t.resets else []) + \
            (["reset_delay=False"] if lif.reset_delay and lif.reset != "none" else [])
        if fixes:
            how = " or ".join({"zero": "to 0", "subtract": "by subtracting the threshold"}[r] for r in t.resets)
            out.append(f"{where}: reset={lif.reset!r}, reset_delay={lif.reset_delay}; {t.name} resets {how} at the "
                       f"spike's step: train with {', '.join(fixes)}")
        for attr in ("v_leak", "v_reset"):
            if np.any(_values(getattr(lif, attr)) != 0):
                out.append(f"{where}: {attr} ≠ 0 ({t.name} rests and resets at 0)")
    if getattr(model, "readout", "count") != "count":
        out.append(f"readout={model.readout!r}: a chip outputs spikes (train with readout='count')")
    if layers:
        if t.max_inputs is not None:
            n_in = int(input_shape[0])                   # features (dense) or channels (conv)
            if n_in > t.max_inputs:
                out.append(f"{n_in} input channels > {t.max_inputs} ({t.name})")
        neurons = [int(np.prod(shapes[i])) for i, _ in layers]
        if t.max_outputs is not None and neurons[-1] > t.max_outputs:
            out.append(f"{neurons[-1]} output neurons > {t.max_outputs} ({t.name})")
        if t.max_hidden is not None and sum(neurons[:-1]) > t.max_hidden:
            out.append(f"{sum(neurons[:-1])} hidden neurons > {t.max_hidden} ({t.name})")
        if t.max_neurons is not None and sum(neurons) > t.max_neurons:
            out.append(f"{sum(neurons)} neurons > {t.max_neurons} per chip ({t.name})")
        synapses = [int(s.weight_mu.numel()) for _, s in layers]     # stored weights (conv kernels shared)
        if t.max_synapses is not None and sum(synapses) > t.max_synapses:
            out.append(f"{sum(synapses)} weights > {t.max_synapses} synapses per chip ({t.name})")
        if t.max_layers is not None and len(layers) > t.max_layers:
            out.append(f"{len(layers)} synaptic layers > {t.max_layers} cores ({t.name})")
        elif t.core_memory:
            sizes = [(int(s.weight_mu.numel()), n, int(s.weight_mu.shape[0])) for (_, s), n in zip(layers, neurons)]
            alone = [k for k, (w, n, b) in enumerate(sizes)
                     if not any(w <= km and n <= nm and b <= bm for km, nm, bm in t.core_memory)]
            for k in alone:
                w, n, _ = sizes[k]
                out.append(f"{names.get(id(layers[k][1]), k)}: {w} weights and {n} neurons fit no core of {t.name} "
                           f"(cores hold (weights, neurons) {sorted({c[:2] for c in t.core_memory})})")
            if not alone and not _matching(sizes, t.core_memory):
                out.append(f"the layers (weights, neurons) {[s[:2] for s in sizes]} do not fit one core each on "
                           f"{t.name}")
    if t.key == "loihi2":                   # the integer grid's ranges (vThMant, bias mantissa, padding)
        from .netx import netx_incompatibilities
        netx_only = ("vThMant", "bias mantissa", "padding", "within a channel", "input_scale must", "half a weight",
                     "multiples of", "two poolings", "after the last layer", "stride 1 and dilation 1")
        out += [m for m in netx_incompatibilities(model, bits or 8) if any(k in m for k in netx_only)]
    return out


def check_target(model: nn.Module, target: Target | str, bits: int | None = None) -> None:
    """Raise :class:`~mesu_snn.errors.ChipConstraintError` listing every violation of ``target``."""
    t = get_target(target) if isinstance(target, str) else target
    problems = target_violations(model, t, bits)
    if problems:
        raise ChipConstraintError(t.name, problems)
