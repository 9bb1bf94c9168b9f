"""NIR export and import of Bayesian spiking networks (``nir`` 1.0.8).

Graph. A chain ``Input → [Affine|Linear|Conv2d → LIF (→ AvgPool2d)]… (→ Flatten → Affine → LIF)
→ Output``. Synaptic nodes carry the mean weights μ (the w = μ network); σ travels in each
node's metadata as ``sigma_weight`` / ``sigma_bias`` (same shapes as ``weight`` / ``bias``).

Time convention (documented once, here). A NIR LIF is ``tau·dv/dt = (v_leak − v) + r·I``; one
forward-Euler step of length ``dt`` gives our discrete neuron::

    v_t = v_leak + (1 − dt/tau)·(v_{t−1} − v_leak) + (r·dt/tau)·I_t

so ``beta = 1 − dt/tau`` and ``input_scale = r·dt/tau``, i.e. ``tau = dt/(1 − beta)`` and
``r = input_scale·tau/dt``. A snnTorch-style neuron (input_scale 1) gets ``r = tau/dt``; a
Norse ``LIFBoxCell``-style neuron (``LIF.norse_box``, input_scale = dt/tau) gets ``r = 1``.
The default ``dt = 1e-4`` s is the step that ``snntorch.import_from_nir`` hard-codes; pass the
same ``dt`` to ``norse.torch.from_nir(graph, dt=1e-4)``. NIR's reset is "to ``v_reset`` at the
spike's step": our ``reset="zero", reset_delay=False``. Each LIF node's metadata records ``dt``,
``reset``, ``reset_delay``, ``detach_reset``, ``beta``, ``threshold``, ``input_scale`` and the
surrogate, so our own files round-trip exactly whatever the reset; third-party importers run
NIR semantics.

Compatibility options of :func:`to_nir` / :func:`model_to_graph` (each tested in
``tests/test_export_nir.py``; ``--target`` of ``mesu-snn export`` picks them per chip):

* ``legacy=True``: for readers built on nir ≤ 1.0.4 (sinabs 3.1, rockpool 3.1 pin it), whose
  node classes have no ``metadata`` and whose LIF has no ``v_reset``: LIF ``v_reset`` is left
  out (refused unless it is 0) and every node's metadata (σ, our exact LIF parameters) moves to
  the graph metadata, ``metadata["node_metadata"][node name]``. :func:`from_nir` puts it back,
  so our own files still round-trip exactly.
* ``pool="sum"``: ``SumPool2d`` nodes instead of ``AvgPool2d``, the 1/k² folded into the next
  synaptic node's weights and σ (``metadata["pool_scale_folded"]``); the graph computes the
  same currents. :func:`from_nir` reads ``SumPool2d`` as k²·average pooling.
* ``uniform=True``: one value per layer for every neuron parameter (SpikingJelly and snnTorch
  need it): per-neuron thresholds (and input gains) are folded into the rows of the previous
  layer (exact: the neuron is linear and resets to 0), per-neuron β, v_leak or v_reset are
  refused with :class:`~mesu_snn.errors.ChipConstraintError`.
* ``neuron="IF"`` (or ``"auto"``, the default, for layers with β = 1): ``IF`` nodes, for
  IF-only chips (DYNAP-CNN/Speck). NIR's IF is ``dv/dt = r·I``, one Euler step ``v += r·dt·I``:
  ``if_r="spec"`` (default) writes ``r = input_scale/dt`` (what SpikingJelly requires),
  ``if_r="step"`` writes ``r = input_scale`` (the per-step gain Norse's IAFCell applies: it
  ignores ``r`` and warns unless ``r = 1``); the graph metadata ``if_r`` records which.
  snnTorch 1.0's importer maps IF to ``Leaky(beta=0.9)`` and cannot run an IF.

Third-party importers (tested in ``tests/test_export_nir.py``):

* ``snntorch.import_nir.import_from_nir`` (snnTorch 1.0.0) builds ``Leaky(beta=1 − 1e-4/tau,
  reset_mechanism="zero", reset_delay=False)``; it needs ``v_leak = 0`` and one threshold per
  layer, and ignores ``v_reset`` (always 0). A network with ``reset="zero",
  reset_delay=False`` and our default ``dt`` is reproduced spike for spike. snnTorch's own
  exporter fails NIR type inference on a scalar ``beta`` (NIR needs per-neuron arrays to know
  a layer's size: neuromorphs/NIR#176, the same failure for Synaptic in
  jeshraghian/snntorch#410) and with a batched sample input; ours writes per-neuron arrays.
  Graphs it exports from per-neuron ``beta``/``threshold`` tensors and an unbatched sample load
  with :func:`from_nir`.
* ``spikingjelly.activation_based.nir_exchange.import_from_nir`` (SpikingJelly 2.0, when it
  is importable; tested in a throwaway install): LIF needs uniform parameters (``uniform=True``),
  ``r = 1`` or ``tau/dt``, ``v_leak = v_reset``; hard reset at the spike's step, no extra
  delay; it fires where ``v ≥ θ`` (ours ``v > θ``: equal unless a membrane lands exactly on the
  threshold). IF needs ``r = 1/dt`` (``if_r="spec"``).
* ``sinabs.nir.from_nir`` (sinabs 3.1.3 on nir 1.0.4, nirtorch 1.0; tested in a throwaway
  install): reads ``legacy=True, pool="sum", neuron="IF"`` files (not ``Linear`` nodes: a dense
  layer needs a bias, written as ``Affine``); its IF is ``IAFSqueeze`` with
  a subtractive reset at the spike's step, several spikes per step when v ≥ 2θ, v ≥ θ to fire
  and v clipped at −θ, ``r`` ignored: networks built with ``reset="subtract",
  reset_delay=False`` whose membranes stay in [−θ, 2θ) are reproduced spike for spike.
* SynSense Xylo Audio 2 (rockpool 3.1.0, xylosim 0.1.3, nir 1.0.4; tested in a throwaway
  install, ``test_xylosim_runs_the_readme_xylo_network``): rockpool's NIR import
  (``rockpool.nn.modules.torch.nir.from_nir``) fails on every ``LIF`` node (it reads
  ``node.tau_mem``, a ``CubaLIF`` field: AttributeError), and ``rockpool.devices.xylo`` (so its
  ``syns61201.XyloSim`` and mapper) cannot be imported without samna, whose PyPI package only
  pip-installs the real one from gitlab.com. The test therefore reads our ``legacy=True`` file
  with nir 1.0.4, quantises it with rockpool's ``transform.quantize_methods.global_quantize``
  (8-bit weights; it scales ``bias_out`` by the hidden layer's scale, the test uses the output
  layer's) and runs ``xylosim.v2.XyloLayer``, the C++ simulator behind ``XyloSim``, as
  ``XyloSim.from_specification`` builds it. Xylo's neuron per step (xylosim v2
  XyloIAFNeuron.cpp): input spikes add W to a synaptic current i, then i ← i − (i ≫ dash_syn),
  v ← v − (v ≫ dash_mem) + i + bias (each decay at least ±1, 16-bit saturating state), and while
  v ≥ θ: a spike and v ← v − θ (hidden neurons up to 31 spikes a step, outputs 1). So: β = 1 −
  2⁻ⁿ as ``dash_mem = log2(tau/dt)``; there is no instantaneous synapse (``dash_syn = 0``
  empties i before it reaches v; ``dash_syn = 1``, half of each input now and the rest over the
  next steps, is the closest); the reset subtracts θ; a hidden spike reaches the output neurons
  one step later (pad the input by one step). A network trained with ``reset="subtract",
  reset_delay=False`` keeps its accuracy there (README digits: 0.623 ours, 0.619 XyloSim); the
  same recipe with ``reset="zero"`` drops from 0.682 to 0.424.
* ``norse.torch.from_nir`` (Norse 1.1.0) builds ``LIFBoxCell(tau_mem_inv = 1/tau, v_th,
  v_leak)`` and ignores ``r`` and ``v_reset``: only ``r = 1`` (``LIF.norse_box`` neurons, with
  ``v_reset = 0``) is reproduced exactly. Norse's own exporter writes ``tau = dt/tau_mem_inv``
  (norse issue #411); ours writes ``tau = 1/tau_mem_inv``. It has no AvgPool2d, so conv nets
  stop at the first pooling node there.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import ChipConstraintError, FileFormatError
from ..functional.surrogate import ATan, FastSigmoid, Heaviside, make_surrogate
from ..neurons import LIF
from ..filecheck import check_h5, open_h5, stamp_h5_digest
from ..runs.atomic import atomic_path, crash_point
from ..runs.checkpoint import check_bayes_state
from ..runs.layout import spec_numel
from ..synapses import BayesConv2d, BayesianLayer, BayesLinear
from ..models import model_from_spec, model_spec
from .stages import AvgPool, Flatten, SpikingSequential, model_stages, stage_shapes

__all__ = ["DEFAULT_DT", "to_nir", "from_nir", "model_to_graph", "graph_to_model", "read_graph",
           "lif_to_nir_params", "nir_to_lif_params", "nir_incompatibilities", "SpikeCountReadout", "SEMANTICS",
           "uniform_neurons", "POOLS", "NEURONS", "IF_R"]

POOLS = ("avg", "sum")            #: AvgPool2d, or SumPool2d with 1/k² folded into the next layer
NEURONS = ("auto", "LIF", "IF")   #: auto: IF where β = 1, LIF elsewhere
IF_R = ("spec", "step")           #: IF r = input_scale/dt (NIR's ODE) or input_scale (per-step gain)

DEFAULT_DT = 1e-4  #: seconds; the step snntorch.import_from_nir assumes


# ---------------------------------------------------------------- pure conversions
def lif_to_nir_params(beta, input_scale, dt: float = DEFAULT_DT) -> tuple[np.ndarray, np.ndarray]:
    """(tau, r) of NIR's LIF from our beta (per step) and input_scale; dt in seconds.

    tau = dt/(1 − beta), r = input_scale·tau/dt. beta must lie in [0, 1)."""
    beta = np.asarray(beta, dtype=np.float64)
    if not dt > 0:
        raise ValueError(f"dt must be > 0 seconds, got {dt!r}")
    if np.any(beta < 0) or np.any(beta >= 1):
        raise ValueError(f"beta must lie in [0, 1) to map to a NIR LIF (beta = 1 has no leak), got {beta}")
    tau = dt / (1.0 - beta)
    return tau, np.asarray(input_scale, dtype=np.float64) * tau / dt


def nir_to_lif_params(tau, r, dt: float = DEFAULT_DT) -> tuple[np.ndarray, np.ndarray]:
    """(beta, input_scale) from NIR's LIF (tau, r): beta = 1 − dt/tau, input_scale = r·dt/tau."""
    tau = np.asarray(tau, dtype=np.float64)
    if np.any(tau <= 0):
        raise ValueError(f"NIR LIF tau must be > 0, got {tau}")
    beta = 1.0 - dt / tau
    if np.any(beta < 0):
        raise ValueError(f"NIR LIF tau={tau.min():g} s is shorter than dt={dt:g} s (beta < 0); pass a smaller dt")
    return beta, np.asarray(r, dtype=np.float64) * dt / tau


def _surrogate_spec(s) -> tuple[str, float]:
    if isinstance(s, FastSigmoid):
        return "fast_sigmoid", float(s.slope)
    if isinstance(s, ATan):
        return "atan", float(s.alpha)
    if isinstance(s, Heaviside):
        return "heaviside", 0.0
    raise ValueError(f"unknown surrogate {s!r}")


def _arr(v, dtype=np.float64) -> np.ndarray:
    return (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(dtype)


def _m(v, dtype=np.float64):
    """A metadata value: python float for scalars (h5py cannot compress 0-d data), else an array."""
    a = _arr(v, dtype)
    return float(a) if a.ndim == 0 else a


def _exact_meta(v):
    """A LIF parameter as stored: python scalars exactly (float64), tensors as float32 arrays."""
    return float(v) if not isinstance(v, torch.Tensor) else _m(v, np.float32)


def _lif_node(lif: LIF, shape, dt: float, neuron: str = "auto", if_r: str = "spec", where: str = "LIF"):
    import nir
    if lif.reset == "none":
        raise ValueError("a LIF with reset='none' has no NIR LIF equivalent")
    full = lambda v: np.broadcast_to(_arr(v), shape).copy()
    name, param = _surrogate_spec(lif.surrogate)
    meta = dict(dt=float(dt), reset=lif.reset, reset_delay=bool(lif.reset_delay), detach_reset=bool(lif.detach_reset),
                beta=_exact_meta(lif.params.beta), threshold=_exact_meta(lif.params.threshold),
                input_scale=_m(lif.input_scale), v_leak=_m(lif.v_leak), v_reset=_m(lif.v_reset),
                surrogate=name, surrogate_param=param)
    integrate = bool(np.all(_arr(lif.beta) == 1.0))
    if neuron == "IF" or (neuron == "auto" and integrate):
        problems = []
        if not integrate:
            problems.append(f"{where}: β = {_arr(lif.beta).reshape(-1)[:4]}… ≠ 1; an IF neuron has no leak (train "
                            "with beta=1 for IF-only chips)")
        if np.any(_arr(lif.v_leak) != 0):
            problems.append(f"{where}: v_leak ≠ 0; NIR's IF has no leak potential")
        if problems:
            raise ChipConstraintError("NIR IF neurons", problems)
        gain = full(lif.input_scale) / (dt if if_r == "spec" else 1.0)
        return nir.IF(r=gain, v_threshold=full(lif.threshold), v_reset=full(lif.v_reset), metadata=meta)
    tau, r = lif_to_nir_params(full(lif.beta), full(lif.input_scale), dt)
    return nir.LIF(tau=tau, r=r, v_leak=full(lif.v_leak), v_threshold=full(lif.threshold),
                   v_reset=full(lif.v_reset), metadata=meta)


def uniform_neurons(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose LIF parameters are one value per layer: per-neuron thresholds
    and input gains are folded into the rows (output channels) of the synaptic layer before
    (μ and σ scaled by g_i·θ_ref/θ_i, θ_ref the layer's mean threshold: the same spikes, as the
    neuron is linear and resets to 0). Per-neuron β, v_leak or v_reset cannot be folded:
    :class:`~mesu_snn.errors.ChipConstraintError` lists them all."""
    import copy
    out = copy.deepcopy(model)
    stages, _ = model_stages(out)
    names = {id(m): n for n, m in out.named_modules()}
    problems = []
    for i, st in enumerate(stages):
        if not isinstance(st, LIF):
            continue
        where = names.get(id(st), f"stage {i}")
        for attr in ("beta", "v_leak", "v_reset"):
            a = _arr(getattr(st, attr)).reshape(-1)
            if a.size > 1 and not np.all(a == a[0]):
                problems.append(f"{where}: per-neuron {attr} (the target needs one value per layer)")
        th, g = _arr(st.threshold), _arr(st.input_scale)
        if (th.size <= 1 or np.all(th == th.reshape(-1)[0])) and (g.size <= 1 or np.all(g == g.reshape(-1)[0])):
            continue
        prev = stages[i - 1] if i > 0 else None
        if not isinstance(prev, BayesianLayer):
            problems.append(f"{where}: per-neuron threshold/input_scale without a synaptic layer before it to fold into")
            continue
        n = prev.weight_mu.shape[0]
        th_n = th.reshape(-1) if th.size > 1 else np.full(n, float(th.reshape(-1)[0]))
        g_n = g.reshape(-1) if g.size > 1 else np.full(n, float(g.reshape(-1)[0]))
        if th_n.size != n or g_n.size != n:
            problems.append(f"{where}: threshold/input_scale vary within a channel; only per-channel values fold")
            continue
        ref = float(th_n.mean())
        row = torch.tensor(g_n * ref / th_n, dtype=prev.weight_mu.dtype)
        shape = (-1,) + (1,) * (prev.weight_mu.dim() - 1)
        with torch.no_grad():
            for _, mu, sig in prev.bayesian_pairs():
                r = row.view(shape) if mu.dim() > 1 else row
                mu.mul_(r)
                sig.mul_(r)
        new = LIF(beta=st.params.beta if _arr(st.beta).size <= 1 else float(_arr(st.beta).reshape(-1)[0]),
                  threshold=ref, reset=st.reset, surrogate=st.surrogate, reset_delay=st.reset_delay,
                  detach_reset=st.detach_reset, v_leak=st.v_leak, v_reset=st.v_reset, input_scale=1.0)
        _replace_module(out, st, new)
        stages[i] = new
    if problems:
        raise ChipConstraintError("uniform neuron parameters per layer", problems)
    return out


def _replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for mod in root.modules():
        for key, child in list(mod.named_children()):
            if child is old:
                setattr(mod, key, new) if not isinstance(mod, (nn.ModuleList, nn.Sequential)) else \
                    mod.__setitem__(int(key), new)
                return
    raise ValueError("internal: module to replace not found")


def _layer_node(layer: BayesianLayer, in_shape, extra: dict, fold: float = 1.0):
    import nir
    w, sw = _arr(layer.weight_mu, np.float32), _arr(layer.weight_sigma, np.float32)
    if fold != 1.0:                      # 1/k² of a preceding sum pooling
        w, sw = (w * np.float32(fold)).astype(np.float32), (sw * np.float32(fold)).astype(np.float32)
        extra = dict(extra, pool_scale_folded=float(fold))
    meta = dict(extra, sigma_weight=sw)
    b = None
    if layer.bias_mu is not None:
        b = _arr(layer.bias_mu, np.float32)
        meta["sigma_bias"] = _arr(layer.bias_sigma, np.float32)
    if isinstance(layer, BayesLinear):
        return nir.Linear(weight=w, metadata=meta) if b is None else nir.Affine(weight=w, bias=b, metadata=meta)
    if isinstance(layer.padding, str):
        raise ValueError(f"NIR Conv2d needs integer padding, got padding={layer.padding!r}")
    if b is None:
        b = np.zeros(w.shape[0], np.float32)
        meta["no_bias"] = True
    return nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[-2:]), weight=w, stride=np.array(layer.stride),
                      padding=np.array(layer.padding), dilation=np.array(layer.dilation), groups=layer.groups,
                      bias=b, metadata=meta)


def _check_options(pool, neuron, if_r):
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
    if if_r not in IF_R:
        raise ValueError(f"if_r must be one of {IF_R}, got {if_r!r}")


def model_to_graph(model: nn.Module, dt: float = DEFAULT_DT, layer_metadata: dict | None = None,
                   metadata: dict | None = None, pool: str = "avg", uniform: bool = False, neuron: str = "auto",
                   if_r: str = "spec"):
    """The NIR graph of a model's mean network (w = μ), σ in metadata. ``layer_metadata``:
    {qualified layer name: dict} added to those layers' node metadata (e.g. quantisation).
    ``pool``, ``uniform``, ``neuron``, ``if_r``: the compatibility options (module docstring)."""
    import nir

    from .._version import __version__
    _check_options(pool, neuron, if_r)
    if uniform:
        model = uniform_neurons(model)
    stages, input_shape = model_stages(model)
    shapes = stage_shapes(stages, input_shape)
    names = {id(m): n for n, m in model.named_modules()}
    layer_metadata = layer_metadata or {}
    nodes = {"input": nir.Input(input_type={"input": np.array(input_shape)})}
    edges, prev, in_shape, non_nir, fold = [], "input", tuple(input_shape), [], 1.0
    for i, (stage, shape) in enumerate(zip(stages, shapes)):
        if isinstance(stage, BayesianLayer):
            qn = names.get(id(stage), f"stage{i}")
            key, node = f"{'conv' if isinstance(stage, BayesConv2d) else 'fc'}{i}", \
                _layer_node(stage, in_shape, dict(layer_metadata.get(qn, {}), layer=qn), fold)
            fold = 1.0
        elif isinstance(stage, LIF):
            if stage.reset != "zero" or stage.reset_delay:
                non_nir.append(f"stage {i}: reset={stage.reset!r}, reset_delay={stage.reset_delay}")
            key = f"lif{i}"
            node = _lif_node(stage, shape, dt, neuron, if_r, names.get(id(stage), f"stage {i}"))
            key = key if type(node).__name__ == "LIF" else f"if{i}"
        elif isinstance(stage, AvgPool):
            k = np.array([stage.kernel_size] * 2)
            if pool == "sum":
                key, node = f"pool{i}", nir.SumPool2d(kernel_size=k, stride=k, padding=np.array([0, 0]),
                                                      metadata={"folded_into_next_layer": 1.0 / stage.kernel_size ** 2})
                fold *= 1.0 / stage.kernel_size ** 2
            else:
                key, node = f"pool{i}", nir.AvgPool2d(kernel_size=k, stride=k, padding=np.array([0, 0]))
        elif isinstance(stage, Flatten):
            key = f"flatten{i}"
            node = nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=len(in_shape) - stage.ndim,
                               end_dim=-1)
        else:
            raise ValueError(f"stage {i} ({type(stage).__name__}) has no NIR node")
        nodes[key] = node
        edges.append((prev, key))
        prev, in_shape = key, shape
    if non_nir:
        warnings.warn(f"LIF resets differ from NIR's ({'; '.join(non_nir)}): stored in metadata for mesu_snn, but "
                      "third-party importers apply NIR's reset (to v_reset at the spike's step); build the network "
                      "with reset='zero', reset_delay=False to match them", stacklevel=3)
    if fold != 1.0:
        raise ValueError("pool='sum' needs a synaptic layer after every pooling stage to fold 1/k² into")
    nodes["output"] = nir.Output(output_type={"output": np.array(in_shape)})
    edges.append((prev, "output"))
    meta = {"format": "mesu_snn", "mesu_snn_version": __version__, "dt": float(dt),
            "model": json.dumps(model_spec(model)),
            "convention": "w = mu (mean network); sigma in node metadata; beta = 1 - dt/tau, "
                          "input_scale = r*dt/tau (forward Euler, step dt seconds)", "if_r": if_r}
    meta.update(metadata or {})
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=True)


def to_nir(model: nn.Module, path, dt: float = DEFAULT_DT, force: bool = False,
           layer_metadata: dict | None = None, metadata: dict | None = None, legacy: bool = False,
           pool: str = "avg", uniform: bool = False, neuron: str = "auto", if_r: str = "spec") -> Path:
    """Write the model's mean network as a NIR file (``nir.write``), atomically; returns the path.

    ``legacy``, ``pool``, ``uniform``, ``neuron``, ``if_r``: the compatibility options of the
    module docstring. FileExistsError if ``path`` exists and not ``force``."""
    import nir
    import h5py
    graph = model_to_graph(model, dt, layer_metadata, metadata, pool=pool, uniform=uniform, neuron=neuron, if_r=if_r)
    if legacy:
        bad = [k for k, n in graph.nodes.items() if type(n).__name__ in ("LIF", "IF")
               and n.v_reset is not None and np.any(np.asarray(n.v_reset) != 0)]
        if bad:
            raise ChipConstraintError("NIR ≤ 1.0.4 readers", [f"node {k}: v_reset ≠ 0 (nir ≤ 1.0.4 has no v_reset; "
                                                              "train with v_reset=0)" for k in bad])
    with atomic_path(path, force) as tmp:
        nir.write(tmp, graph)
        if legacy:
            _to_legacy(tmp)
        with h5py.File(tmp, "r+") as f:       # the tree's SHA-256 (of the file as written), verified by read_graph
            crash_point(f"h5_open:{Path(path).name}")
            stamp_h5_digest(f)
    return Path(path)


def _to_legacy(path) -> None:
    """Rewrite a written NIR file for nir ≤ 1.0.4 readers: node metadata into the graph's
    metadata (``node_metadata/<node>``), LIF/IF ``v_reset`` (all 0, checked) left out."""
    import h5py
    with h5py.File(path, "r+") as f:
        nodes = f["node/nodes"]
        for name in list(nodes.keys()):
            g = nodes[name]
            if "metadata" in g:
                if len(g["metadata"]):
                    f.move(f"node/nodes/{name}/metadata", f"node/metadata/node_metadata/{name}")
                else:
                    del g["metadata"]
            kind = g["type"][()]
            if kind in (b"LIF", b"IF") and "v_reset" in g:
                del g["v_reset"]


# ---------------------------------------------------------------- import
SUPPORTED = ("Input", "Output", "Affine", "Linear", "Conv2d", "LIF", "IF", "AvgPool2d", "Flatten")


def read_graph(path):
    """``nir.read`` with one clear error naming the file: FileNotFoundError, or FileFormatError
    (a ValueError) for a file that is not HDF5, is truncated/corrupt, declares more data than it
    holds, fails its SHA-256 (files we write carry one: :mod:`mesu_snn.filecheck`), or is HDF5
    but not a NIR graph."""
    import h5py
    import nir
    path = Path(path)
    f = open_h5(path, "NIR")
    with f:
        check_h5(f, path)
        if "node" not in f:
            raise FileFormatError(f"{path}: HDF5 file but not a NIR graph (no 'node' group; top-level keys "
                                  f"{sorted(f.keys())[:10]})")
    try:
        return nir.read(path, type_check=False)
    except Exception as e:  # nir raises KeyError/AssertionError/TypeError on damaged graphs
        raise FileFormatError(f"{path}: damaged NIR graph: {type(e).__name__}: {str(e)[:300]}") from None


def _chain(graph, source: str) -> list[str]:
    """Node names from the single Input to the single Output; ValueError if not a chain."""
    ins = [k for k, n in graph.nodes.items() if type(n).__name__ == "Input"]
    if len(ins) != 1:
        raise ValueError(f"{source}: expected one Input node, found {len(ins)}")
    succ: dict[str, list[str]] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    order, cur = [], ins[0]
    while True:
        order.append(cur)
        nxt = succ.get(cur, [])
        if not nxt:
            break
        if len(nxt) > 1 or nxt[0] in order:
            raise ValueError(f"{source}: only feed-forward chains are supported; node {cur!r} feeds {nxt}")
        cur = nxt[0]
    if type(graph.nodes[order[-1]]).__name__ != "Output":
        raise ValueError(f"{source}: the chain from Input ends at {order[-1]!r}, not at an Output node")
    return order


def _meta(node, key, default=None):
    v = node.metadata.get(key, default) if isinstance(node.metadata, dict) else default
    return v.decode() if isinstance(v, bytes) else v


def _sigma(node, key, shape, sigma, source, name):
    v = _meta(node, key)
    if v is not None:
        v = np.asarray(v, dtype=np.float32)
        if v.shape != tuple(shape):
            raise ValueError(f"{source}: node {name!r} metadata {key} has shape {v.shape}, expected {tuple(shape)}")
        return torch.from_numpy(v.copy())
    if sigma is None:
        raise ValueError(f"{source}: node {name!r} has no {key} metadata (not written by mesu_snn); "
                         "pass sigma=... (the prior σ) to from_nir")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    return torch.full(tuple(shape), float(sigma))


def _bayes_from(node, sigma, source, name) -> BayesianLayer:
    kind = type(node).__name__
    w = np.asarray(node.weight, dtype=np.float32)
    has_bias = kind in ("Affine", "Conv2d") and not bool(_meta(node, "no_bias", False))
    if kind == "Conv2d":
        if w.ndim != 4:
            raise ValueError(f"{source}: Conv2d node {name!r} has a weight of shape {w.shape}, expected 4-d")
        layer = BayesConv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]),
                            stride=tuple(int(s) for s in np.broadcast_to(np.asarray(node.stride), (2,))),
                            padding=_pad(node.padding, source, name),
                            dilation=tuple(int(s) for s in np.broadcast_to(node.dilation, (2,))),
                            groups=int(node.groups), bias=has_bias)
    else:
        if w.ndim != 2:
            raise ValueError(f"{source}: {kind} node {name!r} has a weight of shape {w.shape}, expected 2-d")
        layer = BayesLinear(w.shape[1], w.shape[0], bias=has_bias)
    with torch.no_grad():
        layer.weight_mu.copy_(torch.from_numpy(w.copy()))
        layer.weight_sigma.copy_(_sigma(node, "sigma_weight", w.shape, sigma, source, name))
        if has_bias:
            b = np.asarray(node.bias, dtype=np.float32).reshape(-1)
            layer.bias_mu.copy_(torch.from_numpy(b.copy()))
            layer.bias_sigma.copy_(_sigma(node, "sigma_bias", b.shape, sigma, source, name))
    return layer


def _pad(p, source, name):
    if isinstance(p, (str, bytes)):
        raise ValueError(f"{source}: Conv2d node {name!r} has string padding {p!r}; integer padding needed")
    return tuple(int(s) for s in np.broadcast_to(np.asarray(p), (2,)))


def _scalar_or_tensor(v):
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0 or np.all(a == a.reshape(-1)[0]):
        return float(a.reshape(-1)[0])
    return torch.tensor(a, dtype=torch.get_default_dtype())


def _exact(v):
    """A stored LIF parameter back as the same argument (python float, or a float32 tensor)."""
    if np.ndim(v) == 0:
        return float(v)
    return torch.from_numpy(np.asarray(v, dtype=np.float32).copy())


def _lif_from(node, dt, source, name, exact: bool = True, if_r: str = "step") -> LIF:
    kind = type(node).__name__
    if exact and _meta(node, "beta") is not None:  # our own file (LIF or IF node): exact parameters
        return LIF(beta=_exact(_meta(node, "beta")), threshold=_exact(_meta(node, "threshold")),
                   reset=str(_meta(node, "reset")), reset_delay=bool(_meta(node, "reset_delay")),
                   detach_reset=bool(_meta(node, "detach_reset")),
                   surrogate=_surrogate_from(_meta(node, "surrogate"), _meta(node, "surrogate_param")),
                   v_leak=_scalar_or_tensor(_meta(node, "v_leak")), v_reset=_scalar_or_tensor(_meta(node, "v_reset")),
                   input_scale=_scalar_or_tensor(_meta(node, "input_scale")))
    step = float(_meta(node, "dt", dt))
    if kind == "LIF":
        beta, scale = nir_to_lif_params(node.tau, node.r, step)
        leak = node.v_leak
    else:  # IF: no leak; one step integrates r·dt·I (NIR's ODE, if_r="spec") or r·I (Norse's IAFCell)
        r = np.asarray(node.r, np.float64)
        beta, scale, leak = np.ones_like(r), (r * step if if_r == "spec" else r), 0.0
    th = np.asarray(node.v_threshold, dtype=np.float64)
    if np.any(th <= 0):
        raise ValueError(f"{source}: {kind} node {name!r} has a threshold <= 0")
    vr = node.v_reset if node.v_reset is not None else 0.0
    return LIF(beta=_scalar_or_tensor(beta), threshold=_scalar_or_tensor(th), reset="zero", reset_delay=False,
               detach_reset=True, v_leak=_scalar_or_tensor(leak), v_reset=_scalar_or_tensor(vr),
               input_scale=_scalar_or_tensor(scale))


def _surrogate_from(name, param):
    name = str(name)
    return make_surrogate("heaviside") if name == "heaviside" else make_surrogate((name, float(param)))


SEMANTICS = ("mesu_snn", "nir")


def graph_to_model(graph, sigma: float | None = None, dt: float | None = None, source: str = "NIR graph",
                   as_sequential: bool = False, semantics: str = "mesu_snn") -> nn.Module:
    """A Bayesian model from a NIR graph (see :func:`from_nir`)."""
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    exact = semantics == "mesu_snn"
    order = _chain(graph, source)
    gmeta = graph.metadata if isinstance(graph.metadata, dict) else {}
    legacy_meta = gmeta.get("node_metadata")
    if isinstance(legacy_meta, dict):                   # a legacy (nir ≤ 1.0.4) file of ours
        for name, m in legacy_meta.items():
            if name in graph.nodes and isinstance(m, dict) and not graph.nodes[name].metadata:
                graph.nodes[name].metadata = dict(m)
    if_r = gmeta.get("if_r", "step")
    if_r = if_r.decode() if isinstance(if_r, bytes) else str(if_r)
    pending = 1.0                                       # k² of SumPool2d nodes, for the next synaptic layer
    step = float(dt if dt is not None else gmeta.get("dt", DEFAULT_DT))
    inp = graph.nodes[order[0]]
    input_shape = tuple(int(s) for s in np.asarray(inp.input_type["input"]).reshape(-1))
    stages = []
    for name in order[1:-1]:
        node = graph.nodes[name]
        kind = type(node).__name__
        if kind in ("Affine", "Linear", "Conv2d"):
            layer = _bayes_from(node, sigma, source, name)
            if pending != 1.0:
                with torch.no_grad():
                    layer.weight_mu.mul_(pending)
                    layer.weight_sigma.mul_(pending)
                pending = 1.0
            stages.append(layer)
        elif kind in ("LIF", "IF"):
            stages.append(_lif_from(node, step, source, name, exact, if_r))
        elif kind in ("AvgPool2d", "SumPool2d"):
            k, s, p = (np.broadcast_to(np.asarray(v), (2,)) for v in (node.kernel_size, node.stride, node.padding))
            if k[0] != k[1] or np.any(s != k) or np.any(p != 0):
                raise ValueError(f"{source}: {kind} node {name!r} must be square with stride = kernel and no "
                                 f"padding, got kernel {k}, stride {s}, padding {p}")
            stages.append(AvgPool(int(k[0])))
            if kind == "SumPool2d":                     # sum = k²·average, carried into the next layer
                pending *= float(k[0]) ** 2
        elif kind == "Flatten":
            ishape = np.asarray(node.input_type["input"]).reshape(-1)
            start = int(node.start_dim) % max(len(ishape), 1)
            if int(node.end_dim) not in (-1, len(ishape) - 1):
                raise ValueError(f"{source}: Flatten node {name!r} must flatten to the last dim")
            stages.append(Flatten(len(ishape) - start))
        else:
            raise ValueError(f"{source}: node {name!r} of type {kind} is not supported (supported: "
                             f"{', '.join(SUPPORTED)})")
    seq = SpikingSequential(stages, input_shape)
    spec = json.loads(gmeta["model"]) if isinstance(gmeta.get("model"), str) else {}
    if not exact:
        return seq          # what the graph says, run as NIR defines it: the last LIF's spikes are the output
    if as_sequential or spec.get("class") not in ("SpikingMLP", "SpikingConvNet"):
        return seq
    return _rebuild(spec, stages, source)


def _rebuild(spec: dict, stages, source) -> nn.Module:
    """Our own model class from its spec, with the imported stages' parameters and neurons."""
    lifs = [s for s in stages if isinstance(s, LIF)]
    layers = [s for s in stages if isinstance(s, BayesianLayer)]
    have = sum(p.numel() for s in stages for p in s.parameters())
    if spec_numel(spec) > 2 * have + 4096:     # build nothing the graph's tensors could not fill
        raise ValueError(f"{source}: the recorded model {spec.get('class')} asks for about {spec_numel(spec)} "
                         f"parameters but the graph holds {have}; the file is corrupt")
    model = model_from_spec(spec)
    if spec["class"] == "SpikingMLP":
        model.neurons = nn.ModuleList(lifs)
        model.layers = nn.ModuleList(layers)
    else:
        model.neurons, model.out_neuron = nn.ModuleList(lifs[:-1]), lifs[-1]
        model.convs, model.fc = nn.ModuleList(layers[:-1]), layers[-1]
    if len(model_stages(model)[0]) != len(stages):
        raise ValueError(f"{source}: graph does not match its recorded model {spec}")
    return model


def from_nir(path, sigma: float | None = None, dt: float | None = None, as_sequential: bool = False,
             semantics: str = "mesu_snn") -> nn.Module:
    """Read a NIR file into a Bayesian model.

    Our own files give back the original class (SpikingMLP / SpikingConvNet) with identical μ,
    σ and neurons; other graphs give a :class:`SpikingSequential` (or with ``as_sequential``).
    σ comes from node metadata, else every σ = ``sigma`` (the prior). ``dt`` (s) converts
    tau to beta for graphs without our metadata (default: the graph's ``dt`` metadata, else
    1e-4 s as snnTorch). Supported nodes: Input, Output, Affine, Linear, Conv2d, LIF, IF,
    AvgPool2d, Flatten, in one feed-forward chain.

    ``semantics="nir"`` ignores our exact-reproduction metadata and runs the graph as NIR
    defines it, as a third-party importer would: forward-Euler LIF ``v ← v_leak + (1 − dt/τ)(v −
    v_leak) + (r·dt/τ)·I``, reset to ``v_reset`` at the spike's step, the output the last LIF's
    spikes (a :class:`SpikingSequential`, (M, T, B, C)): a reference NIR simulator for checking
    what an export means where it is loaded."""
    graph = read_graph(path)
    try:
        model = graph_to_model(graph, sigma=sigma, dt=dt, source=str(path), as_sequential=as_sequential,
                               semantics=semantics)
    except FileFormatError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError,
            MemoryError) as e:   # a graph read from a file may hold anything
        msg = str(e)[:500]
        raise FileFormatError(msg if str(path) in msg else f"{path}: damaged NIR graph: {type(e).__name__}: "
                              f"{msg}") from None
    check_bayes_state(model.state_dict(), path)     # μ and neuron parameters finite, σ finite and > 0
    return model


class SpikeCountReadout(nn.Module):
    """(M, T, B, C) output spikes of a NIR-semantics network -> (M, B, C) spike counts (the
    prediction a chip reads: the class that fires most)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(x, samples=samples, generator=generator).sum(1)


def nir_incompatibilities(model: nn.Module) -> list[str]:
    """What of ``model`` NIR (and so every third-party importer) cannot express; empty when the
    export runs exactly as trained. Each entry says what to train with instead."""
    stages, _ = model_stages(model)
    out = []
    bad = sorted({(s.reset, bool(s.reset_delay)) for s in stages if isinstance(s, LIF)
                  and (s.reset != "zero" or s.reset_delay)})
    if bad:
        out.append("LIF reset " + ", ".join(f"reset={r!r} with reset_delay={d}" for r, d in bad) +
                   " (NIR resets to v_reset at the spike's step: train with reset='zero', reset_delay=False)")
    if getattr(model, "readout", "count") != "count":
        out.append(f"readout={model.readout!r} (NIR's output is the last layer's spikes: train with readout='count')")
    return out
