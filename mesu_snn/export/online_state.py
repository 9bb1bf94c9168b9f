"""Chip-ready state of the online rule (``mesu_online`` / ``sgd_online``): every synapse's μ and σ,
the trace decay constants and the learning-signal wiring, in one HDF5 file (``h5py``), optionally
with the NIR graph of the mean network beside it (:func:`mesu_snn.export.to_nir`).

Schema, version 1 (all arrays float32 unless said; ``J`` = a layer's outputs, ``I`` its inputs,
``K`` the classes)::

    /                       attrs: format = "mesu_snn.online_state", version = 1, rule, feedback
                                   ("symmetric" | "random" | "local"), feedback_seed, chunk,
                                   n_layers, model_spec (JSON), hyperparameters (JSON),
                                   state_per_synapse (JSON: the trace variables a chip keeps),
                                   fixed_point_bits (0: float32; b: μ, σ are b-bit integers × step),
                                   readout ("membrane" | "count"), trace_bits (0: float traces; b: x̄,
                                   ē are b-bit integers × a step per layer, stochastic rounding),
                                   error_sent_down ("delta": δ_k; "delta_times_psi_sum": δ_k Σ_t ψ_k(t),
                                   the count readout's)
    /layer{i}/weight_mu     (J, I)   mean weight μ
    /layer{i}/weight_sigma  (J, I)   standard deviation σ
    /layer{i}/bias_mu, bias_sigma (J,)   (only if the layer has a bias)
    /layer{i}               attrs: role ("hidden" | "readout");
                                   presynaptic_decay = β of this layer's (postsynaptic) neurons (absent
                                       when per neuron: then the dataset below):
                                       x̄_i(t) = β x̄_i(t−1) + input_scale·x_i(t);
                                   trace ("presynaptic": x̄_i as above; "synaptic": one trace per synapse,
                                       x̃_ji(t) = β_j (1 − s_j(t−1))^[reset = "zero"] x̃_ji(t−1) + input_scale·x_i(t),
                                       used in place of x̄_i below);
                                   input_scale, threshold, reset, reset_delay, surrogate, surrogate_param:
                                       ψ_j(t) = S'(v_j(t) − threshold);
                                   eligibility_decay = κ (the readout's decay), eligibility_gain:
                                       ē_ji(t) = κ ē_ji(t−1) + gain·ψ_j(t) x̄_i(t)  (hidden layers);
                                   (readout layer, readout = "count": eligibility_decay 0, the gradient
                                       Σ_t ψ_k(t) x̄_j(t) with ψ of its spiking neurons);
                                   learning_signal: "output_error" (readout: δ_k; membrane readout ψ ≡ 1),
                                       "weights_above" (symmetric: L = δ·W of layer i+1),
                                       "feedback_matrix" (random: L = δ·B) or "local_readout"
                                       (local: L = δ^local·R, δ^local the error of z = R·mean ū)
    /layer{i}/feedback      (K, J)   B or R (random / local hidden layers only)
    /layer{i}/presynaptic_decay (J,) the per-neuron β_j (only when β is per neuron)
    /layer{i}               attrs (trace_bits only): trace_step, eligibility_step: the grid steps of x̄ (x̃) and ē
    /layer{i}               attrs (fixed point only): weight_mu_step, weight_sigma_step, bias_mu_step,
                                   bias_sigma_step: the grid steps Δ (value / Δ is an integer of b bits)

The update at the end of a window of T steps: g_ji = L_j·(1/T) Σ_t ē_ji(t) per Monte-Carlo sample,
∂C/∂μ = Σ_m g_m, ∂C/∂σ = Σ_m ε_m g_m, then MESU's equations (:mod:`mesu_snn.functional.mesu`) with
the file's hyperparameters. :func:`read_online_state` reads it back (checking the format).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..models import model_spec
from ..runs.atomic import atomic_path

__all__ = ["export_online_state", "read_online_state", "FORMAT", "VERSION"]

FORMAT = "mesu_snn.online_state"
VERSION = 1


def _np(t) -> np.ndarray:
    return t.detach().cpu().to(dtype=__import__("torch").float32).numpy()


def export_online_state(rule, path, force: bool = False, nir_path=None) -> Path:
    """Write the online rule's chip state (schema in the module docstring) to ``path`` atomically;
    with ``nir_path`` also the mean network's NIR graph there. FileExistsError if a target exists
    and not ``force``; ValueError if ``rule`` is not an online rule."""
    import h5py
    engine = getattr(rule, "engine", None)
    if not getattr(rule, "online", False) or engine is None:
        raise ValueError(f"export_online_state needs an online rule (mesu_online, sgd_online), got {rule!r}")
    from ..functional.eligibility import needs_synaptic_trace, scalar_beta
    model = engine.model
    n = len(model.layers)
    count = model.readout == "count"
    readout = model.neurons[-1].params
    per_synapse = {"ebar": "filtered eligibility ē_ji (one per MC sample and batch element)",
                   "ebar_sum": "Σ_t ē_ji over the window", "epsilon": "the sample's ε_ji (w = μ + σε)"}
    if any(needs_synaptic_trace(lif.params) for lif in model.neurons[:n if count else n - 1]):
        per_synapse["xtilde"] = "per-synapse presynaptic trace x̃_ji (layers with trace = 'synaptic')"
    tsteps = engine.trace_steps or []
    with atomic_path(path, force) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FORMAT, version=VERSION, rule=rule.name, feedback=engine.feedback,
                           feedback_seed=engine.feedback_seed, chunk=engine.chunk, n_layers=n,
                           model_spec=json.dumps(model_spec(model)),
                           hyperparameters=json.dumps(rule.hyperparameters),
                           state_per_synapse=json.dumps(per_synapse),
                           fixed_point_bits=int(getattr(rule, "fixed_point_bits", 0)), readout=model.readout,
                           trace_bits=int(engine.trace_bits),
                           error_sent_down="delta_times_psi_sum" if count else "delta")
            steps = {id(mu): (smu, ssig) for mu, _, smu, ssig in getattr(rule, "_grids", [])}
            for i, layer in enumerate(model.layers):
                g = f.create_group(f"layer{i}")
                g["weight_mu"] = _np(layer.weight_mu)
                g["weight_sigma"] = _np(layer.weight_sigma)
                if layer.bias_mu is not None:
                    g["bias_mu"] = _np(layer.bias_mu)
                    g["bias_sigma"] = _np(layer.bias_sigma)
                lif = model.neurons[i]
                p = lif.params
                sur = p.surrogate
                param = next(iter(getattr(sur, "__dataclass_fields__", {})), None)
                hidden = i < n - 1
                spiking = hidden or count
                beta = scalar_beta(p)
                if beta is None:
                    g["presynaptic_decay"] = _np(p.beta)
                else:
                    g.attrs["presynaptic_decay"] = beta
                if i < len(tsteps):
                    g.attrs["trace_step"], g.attrs["eligibility_step"] = tsteps[i]
                g.attrs.update(role="hidden" if hidden else "readout",
                               trace="synaptic" if spiking and needs_synaptic_trace(p) else "presynaptic",
                               input_scale=float(p.input_scale), threshold=float(p.threshold),
                               reset=p.reset if spiking else "none", reset_delay=bool(p.reset_delay),
                               surrogate=type(sur).__name__,
                               surrogate_param=float(getattr(sur, param)) if param else 0.0,
                               eligibility_decay=scalar_beta(readout) if hidden else 0.0,
                               eligibility_gain=float(readout.input_scale) if hidden else 1.0)
                for name, mu in (("weight", layer.weight_mu), ("bias", layer.bias_mu)):
                    if mu is not None and id(mu) in steps:      # fixed point: value = integer × step
                        g.attrs[f"{name}_mu_step"], g.attrs[f"{name}_sigma_step"] = steps[id(mu)]
                if not hidden:
                    g.attrs["learning_signal"] = "output_error"
                elif engine.feedback == "symmetric":
                    g.attrs["learning_signal"] = "weights_above"
                else:
                    g.attrs["learning_signal"] = "feedback_matrix" if engine.feedback == "random" else "local_readout"
                    g["feedback"] = _np(engine.feedback_matrices[i])
    if nir_path is not None:
        from .nir_export import to_nir
        to_nir(model, nir_path, force=force)
    return Path(path)


def read_online_state(path) -> dict:
    """The file as {"attrs": {...}, "layers": [{"attrs": {...}, name: array, ...}, ...]}; ValueError
    naming the file if it is not an online-state file of a known version."""
    from ..filecheck import open_h5
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"online state file {path} does not exist")
    try:
        with open_h5(path, "online state") as f:
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} file (format attribute {attrs.get('format')!r})")
            if attrs.get("version") != VERSION:
                raise ValueError(f"{path}: {FORMAT} version {attrs.get('version')!r}, this reader knows {VERSION}")
            layers = []
            for i in range(int(attrs["n_layers"])):
                g = f[f"layer{i}"]
                entry = {"attrs": {k: (v.item() if hasattr(v, "item") else v) for k, v in g.attrs.items()}}
                entry.update({k: g[k][()] for k in g.keys()})
                layers.append(entry)
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file (corrupt or truncated): {e}") from None
    for k in ("model_spec", "hyperparameters", "state_per_synapse"):
        attrs[k] = json.loads(attrs[k])
    return {"attrs": attrs, "layers": layers}
