"""Online, local learning of a :class:`~mesu_snn.SpikingMLP`: eligibility traces instead of
backpropagation through time, with a MESU or a plain SGD update.

The network is run forward one time step at a time; every layer keeps its membrane, its
presynaptic trace x̄ and its filtered eligibility ē (and their running sum Ē); at the end of the
window of T steps (one presentation of a batch) the output error δ is turned into one learning
signal L_j per neuron (``feedback``: ``"symmetric"``, ``"random"`` or ``"local"``) and the
gradient g_ji = L_j·Ē_ji is formed per Monte-Carlo sample. Nothing grows with T. The maths, the
approximations (the reset's gradient is dropped; the zero reset's per-synapse trace, zeroed at the
postsynaptic spike; per-neuron β; the count readout's rate approximation for the hidden layers;
the fixed-point traces) and the references are in :mod:`mesu_snn.functional.eligibility`.

* :class:`OnlineEligibility`: the forward-in-time pass (weights given, gradients returned).
* :class:`OnlineMESURule` (``"mesu_online"``): w = μ + σ·ε per sample for the window;
  ∂C/∂μ = Σ_m g_m, ∂C/∂σ = Σ_m ε_m g_m; then the :class:`~mesu_snn.MESU` optimizer's own step
  (the same pure function, :func:`mesu_snn.functional.mesu.mesu_update`).
* :class:`OnlineSGDRule` (``"sgd_online"``): the same eligibility gradient on w = μ (mean
  mode), plain SGD.

Both are driven by the trainer through :meth:`train_step` (``rule.online`` is true): the trainer
hands the encoded batch over instead of calling backward.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from ..functional.eligibility import (check_online_lif, count_error, deep_symmetric_signal, eligibility_chunk_,
                                      eligibility_gradient, filtered_eligibility_, filtered_synaptic_eligibility_,
                                      learning_signal, mc_gradients, needs_synaptic_trace, pre_reset_membrane,
                                      presynaptic_trace, presynaptic_trace_chunk, random_feedback, readout_error,
                                      scalar_beta, surrogate_derivative, synaptic_trace, synaptic_trace_decay,
                                      trace_gradient, trace_ranges)
from ..functional.fixed_point import fixed_point_round, fixed_point_step
from ..losses import nll_loss
from ..models import SpikingMLP
from ..neurons import LIF
from .mesu import MESURule
from .rule import Rule, make_base_optimizer, mean_mode_parameters

__all__ = ["OnlineEligibility", "OnlineMESURule", "OnlineSGDRule", "FEEDBACKS"]

FEEDBACKS = ("symmetric", "random", "local")


def _with_ones(x: torch.Tensor, bias: bool) -> torch.Tensor:
    """x (..., n) -> (..., n + 1) with a constant-1 input for the bias (unchanged without bias)."""
    if not bias:
        return x
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)


class OnlineEligibility:
    """The eligibility-trace pass over a :class:`~mesu_snn.SpikingMLP` (``readout="membrane"`` or
    ``"count"``, input layer ``estimator="weights"``, LIF with reset ``"subtract"``, ``"none"`` or
    ``"zero"``, fixed β: one scalar, or per neuron (a 1-D tensor) in the hidden layers).
    ``estimator="local"`` is refused: ∂C/∂σ = ε·∂C/∂w needs the per-synapse draw ε of
    w = μ + σ·ε, which the local estimator (pre-activations sampled from their law) never makes.

    feedback: ``"symmetric"`` (Wᵀ of the layer above, per sample), ``"random"`` (fixed random
    B^ℓ (K, J_ℓ) from the output error to every hidden layer) or ``"local"`` (fixed random
    readout R^ℓ (K, J_ℓ) per hidden layer, each with its own local loss, DECOLLE-style).
    feedback_seed: seed of the fixed matrices (held in :attr:`feedback_matrices`, also for
    export). chunk: steps whose (ψ, x̄) are buffered and folded into ē, Σē by two matrix products
    (:func:`~mesu_snn.functional.eligibility.eligibility_chunk_`, the same recurrence; memory
    O(chunk), not O(T)); ``chunk=1``: one rank-1 update per step, as a chip would. Layers with a
    per-synapse trace (zero reset, per-neuron β) and the fixed-point traces always take the
    per-step recurrence (chunk then only sets how many input steps are buffered).
    trace_bits: 0 (float traces) or b in [2, 32]: after every step the presynaptic trace x̄ (x̃)
    and the filtered eligibility ē of every layer with eligibility traces (the hidden layers; the
    output layer too with the count readout; the membrane readout's ū stays float) are put on
    b-bit signed grids with stochastic rounding (stream seeded from ``feedback_seed``), one step per layer and variable from the worst-case range
    (:func:`~mesu_snn.functional.eligibility.trace_ranges`), fixed at the first window (the
    input layer's range from that window's max |x|); Σē is a wide (float) accumulator.
    """

    def __init__(self, model: nn.Module, feedback: str = "symmetric", feedback_seed: int = 0, chunk: int = 16,
                 trace_bits: int = 0):
        if not isinstance(model, SpikingMLP):
            raise ValueError(f"online eligibility traces support SpikingMLP, got {type(model).__name__}")
        if model.readout not in ("membrane", "count"):
            raise ValueError(f"online eligibility traces need readout 'membrane' or 'count', got {model.readout!r}")
        if model.layers[0].estimator != "weights":
            raise ValueError(f"online eligibility traces need the input layer's estimator='weights', got "
                             f"{model.layers[0].estimator!r}: the online σ gradient is ∂C/∂σ = ε·∂C/∂w, which "
                             "needs the per-synapse draw ε of w = μ + σ·ε, and the 'local' estimator never draws "
                             "ε (it samples the pre-activations, jointly over the window's T steps, and its own "
                             "σ gradient needs the error at every step, which the window-end learning signal "
                             "does not give); build the model with estimator='weights'")
        if feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be one of {FEEDBACKS}, got {feedback!r}")
        for i, lif in enumerate(model.neurons):
            if any(p.requires_grad for p in lif.parameters()):
                raise ValueError(f"neurons[{i}]: online eligibility traces need a fixed beta and threshold (no "
                                 "learn_beta, no learn_threshold)")
            check_online_lif(lif.params, f"neurons[{i}]")
        if scalar_beta(model.neurons[-1].params) is None:
            raise ValueError(f"neurons[{len(model.neurons) - 1}] (output layer): online eligibility traces need one "
                             "scalar beta there (it is the filter κ of every hidden layer's ē); per-neuron beta is "
                             "supported in the hidden layers")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive int (steps folded into the traces at once), got {chunk!r}")
        if isinstance(trace_bits, bool) or not isinstance(trace_bits, int) or trace_bits == 1 \
                or not 0 <= trace_bits <= 32:
            raise ValueError(f"trace_bits must be 0 (float traces) or an int in [2, 32], got {trace_bits!r}")
        self.model, self.feedback, self.feedback_seed, self.chunk = model, feedback, int(feedback_seed), chunk
        self.trace_bits = trace_bits
        #: fixed-point traces: per spiking layer (x̄ step, ē step), set at the first window
        self.trace_steps: list[tuple[float, float]] | None = None
        self._trace_rng: torch.Generator | None = None
        k = model.sizes[-1]
        mu = model.layers[0].weight_mu
        self.feedback_matrices: list[torch.Tensor | None] = [
            None if feedback == "symmetric" else
            random_feedback(k, j, self.feedback_seed * 1000 + i, dtype=mu.dtype, device=mu.device)
            for i, j in enumerate(model.sizes[1:-1])]
        self.state_shapes: dict[str, tuple[int, ...]] = {}
        self._buffers: dict[str, torch.Tensor] = {}

    # -- weights -----------------------------------------------------------------------
    def _bias(self, i: int) -> bool:
        return self.model.layers[i].bias_mu is not None

    def mean_weights(self) -> list[torch.Tensor]:
        """w = μ per layer as (1, out, in [+1 bias column])."""
        out = []
        for i, layer in enumerate(self.model.layers):
            w = layer.weight_mu.detach()
            if self._bias(i):
                w = torch.cat([w, layer.bias_mu.detach()[:, None]], 1)
            out.append(w.unsqueeze(0))
        return out

    def sample_weights(self, samples: int, generator: torch.Generator | None = None):
        """M draws w = μ + σ·ε per layer, in the order the model's forward draws them (so the same
        generator state gives the same weights as ``model(x, samples=M, generator=g)``).
        Returns (weights, noise): lists of (M, out, in [+1]) tensors."""
        weights, noise = [], []
        for i, layer in enumerate(self.model.layers):
            ew, eb = layer.draw_noise(samples, generator)
            mu, sig = layer.weight_mu.detach(), layer.weight_sigma.detach()
            if self._bias(i):
                mu = torch.cat([mu, layer.bias_mu.detach()[:, None]], 1)
                sig = torch.cat([sig, layer.bias_sigma.detach()[:, None]], 1)
                ew = torch.cat([ew, eb[..., None]], -1)
            weights.append(torch.addcmul(mu, sig, ew))
            noise.append(ew)
        return weights, noise

    def _zeros(self, key: str, shape, like: torch.Tensor) -> torch.Tensor:
        """A zeroed per-synapse buffer, reused across windows (no fresh allocation per update)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != torch.Size(shape) or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[key] = like.new_zeros(shape)
        else:
            buf.zero_()
        return buf

    # -- the pass ------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, x: torch.Tensor | Iterable[torch.Tensor], y: torch.Tensor, weights: list[torch.Tensor]):
        """One window: x (T, B, in) or an iterable of (B, in) steps; y (B,); weights from
        :meth:`sample_weights` / :meth:`mean_weights`. Returns (logits (M, B, K), per-sample
        gradients: one (M, out, in [+1]) tensor per layer, of C = nll_loss(logits, y)).

        The steps are taken ``chunk`` at a time; within a chunk the layers run one after the other
        (feed-forward: layer ℓ's K steps need only layer ℓ−1's), each carrying its state
        (membrane, traces) from the previous chunk, so nothing of size T is kept. With
        ``readout="count"`` the output layer spikes and has eligibility traces like a hidden layer
        (ē unfiltered: ∂z_k/∂W_kj = Σ_t ψ_k(t) ū_kj(t)), and the hidden layers receive the error
        δ_k Σ_t ψ_k(t) (:func:`~mesu_snn.functional.eligibility.count_error`)."""
        model = self.model
        hidden = len(model.layers) - 1
        count = model.readout == "count"
        m = weights[0].shape[0]
        ps = [lif.params for lif in model.neurons]
        kappa = scalar_beta(ps[-1])
        po = ps[-1].with_(reset="none", beta=kappa)   # the membrane readout: non-spiking leaky integrator
        g_out = po.input_scale
        local = self.feedback == "local"
        spiking = hidden + (1 if count else 0)       # layers with eligibility traces
        if self.trace_bits and self.trace_steps is None and isinstance(x, torch.Tensor):
            self._calibrate(ps, float(x.abs().max()), int(x.shape[0]), kappa, g_out, spiking)
        st: dict[str, torch.Tensor | None] = {}   # the state carried across chunks
        steps = 0
        for x_c in self._chunks(x):              # (K, B, in)
            if self.trace_bits and self.trace_steps is None:
                self._calibrate(ps, float(x_c.abs().max()), None, kappa, g_out, spiking)
            k = x_c.shape[0]
            steps += k
            inp = _with_ones(x_c.to(weights[0].dtype), self._bias(0))     # (K, B, in+1), shared by the samples
            for i in range(spiking):
                p = ps[i]
                kap, gain = (kappa, g_out) if i < hidden else (0.0, 1.0)   # count readout: ē = e
                if i == 0:
                    cur = torch.matmul(inp.reshape(-1, inp.shape[-1]), weights[0].transpose(1, 2))  # (M, K·B, J)
                else:
                    cur = torch.bmm(inp.reshape(m, -1, inp.shape[-1]), weights[i].transpose(1, 2))
                cur = cur.reshape(m, k, -1, cur.shape[-1])                                         # (M, K, B, J)
                v0 = st.get(f"v{i}")
                s, v = LIF._run(cur, p, v0, True, 1)
                st[f"v{i}"] = v[:, -1]
                pre = pre_reset_membrane(v, cur, v0, p) if p.reset == "zero" and not p.reset_delay else None
                psi = surrogate_derivative(v, p, s, pre)
                if f"ebar{i}" not in st:
                    shape = (m, cur.shape[2], cur.shape[3], inp.shape[-1])
                    st[f"ebar{i}"] = self._zeros(f"ebar{i}", shape, cur)
                    st[f"ebar_sum{i}"] = self._zeros(f"ebar_sum{i}", shape, cur)
                    st[f"psi_sum{i}"] = torch.zeros_like(psi[:, 0])
                if needs_synaptic_trace(p) or self.trace_bits:
                    self._step_traces(st, i, inp, psi, s, p, kap, gain, shared=i == 0)
                else:
                    xbar = presynaptic_trace_chunk(st.get(f"xbar{i}"), inp, scalar_beta(p), p.input_scale,
                                                   time_dim=0 if i == 0 else 1)
                    st[f"xbar{i}"] = xbar[-1] if i == 0 else xbar[:, -1]
                    eligibility_chunk_(st[f"ebar{i}"], st[f"ebar_sum{i}"], psi, xbar, kap, gain)
                st[f"psi_sum{i}"].add_(psi.sum(1))
                if local and i < hidden:
                    self._trace_sum(st, f"ulocal{i}", s, kappa, g_out)
                if i < hidden:
                    inp = _with_ones(s, self._bias(i + 1))                   # (M, K, B, J+1)
            if count:                            # spike counts of the output layer
                st["z_sum"] = s.sum(1) if st.get("z_sum") is None else st["z_sum"] + s.sum(1)
                continue
            # output layer: leaky-integrator readout, averaged over the steps
            if hidden == 0:
                inp = inp.unsqueeze(0).expand(m, *inp.shape)                # (M, K, B, in+1)
            self._trace_sum(st, "ubar", inp, kappa, g_out)
            cur = torch.bmm(inp.reshape(m, -1, inp.shape[-1]), weights[-1].expand(m, -1, -1).transpose(1, 2))
            cur = cur.reshape(m, k, -1, cur.shape[-1])
            _, u = LIF._run(cur, po, st.get("u"), True, 1)
            st["u"] = u[:, -1]
            st["z_sum"] = u.sum(1) if st.get("z_sum") is None else st["z_sum"] + u.sum(1)
        if steps == 0:
            raise ValueError("online pass: the input has no time steps")
        logits = st["z_sum"] if count else st["z_sum"] / steps
        delta = readout_error(logits, y)
        grads = [None] * (hidden + 1)
        if count:
            grads[-1] = eligibility_gradient(delta, st[f"ebar_sum{hidden}"])     # Σ_t ψ_k ū_kj (a sum: counts)
            delta_down = count_error(delta, st[f"psi_sum{hidden}"])
        else:
            grads[-1] = trace_gradient(delta, st["ubar_sum"] / steps)
            delta_down = delta
        signal = None
        for i in reversed(range(hidden)):
            j = model.sizes[i + 1]
            if self.feedback == "symmetric":
                if i == hidden - 1:
                    signal = learning_signal(delta_down, weights[-1][..., :j])
                else:
                    pa = ps[i + 1]
                    signal = deep_symmetric_signal(signal, st[f"psi_sum{i + 1}"] / steps, weights[i + 1][..., :j],
                                                   pa.beta, pa.input_scale, steps)
            elif self.feedback == "random":
                signal = learning_signal(delta_down, self.feedback_matrices[i])
            else:
                r = self.feedback_matrices[i]
                local_delta = readout_error(st[f"ulocal{i}_sum"] / steps @ r.t(), y)
                signal = learning_signal(local_delta, r)
            grads[i] = eligibility_gradient(signal, st[f"ebar_sum{i}"] / steps)
        self.state_shapes = {key: tuple(t.shape) for key, t in st.items() if t is not None}
        return logits, grads

    def _calibrate(self, ps, input_max: float, steps: int | None, kappa: float, g_out, spiking: int) -> None:
        """Fix the fixed-point grid steps of every spiking layer's x̄ and ē (worst-case ranges)."""
        out = []
        for i in range(spiking):
            hidden = i < len(self.model.layers) - 1
            p = ps[i]
            b = scalar_beta(p)
            b = float(p.beta.max()) if b is None else b
            if steps is None and max(b, kappa if hidden else 0.0) >= 1.0:
                raise ValueError("trace_bits with beta = 1 needs the window as a (T, B, in) tensor (the trace "
                                 "range is then set from T)")
            n = steps if steps is not None else 10 ** 9
            x_max = max(input_max, 1.0 if self._bias(0) else 0.0) if i == 0 else 1.0
            xr, er = trace_ranges(p, x_max, n, kappa if hidden else 0.0, g_out if hidden else 1.0)
            out.append((fixed_point_step(xr, self.trace_bits), fixed_point_step(er, self.trace_bits)))
        self.trace_steps = out

    def _round(self, t: torch.Tensor, step: float) -> torch.Tensor:
        if self._trace_rng is None or self._trace_rng.device != t.device:
            self._trace_rng = torch.Generator(device=t.device).manual_seed(self.feedback_seed + 104729)
        return fixed_point_round(t, step, self.trace_bits, self._trace_rng)

    def _step_traces(self, st: dict, i: int, inp: torch.Tensor, psi: torch.Tensor, s: torch.Tensor, p, kappa: float,
                     gain, shared: bool) -> None:
        """The per-step trace recurrence of layer i over the chunk: x̄ (per presynaptic neuron) or x̃
        (per synapse: zero reset, per-neuron β), ē and Σē; fixed-point rounding with ``trace_bits``.
        inp (K, B, n) (shared) or (M, K, B, n); psi, s (M, K, B, J)."""
        per_synapse = needs_synaptic_trace(p)
        m, k, b, j = psi.shape
        n = inp.shape[-1]
        key = f"xbar{i}"
        tr = st.get(key)
        if tr is None:
            if per_synapse:
                shape = (b, j, n) if shared and p.reset != "zero" else (m, b, j, n)
            else:
                shape = (b, n) if shared else (m, b, n)
            tr = psi.new_zeros(shape)
        beta = None if per_synapse else scalar_beta(p)
        ebar, ebar_sum = st[f"ebar{i}"], st[f"ebar_sum{i}"]
        s_prev = st.get(f"s_prev{i}")
        x_step, e_step = self.trace_steps[i] if self.trace_bits else (None, None)
        gain = float(gain)
        for t in range(k):
            x_t = inp[t] if shared else inp[:, t]
            if per_synapse:
                tr = synaptic_trace(tr, x_t, synaptic_trace_decay(p, s_prev), p.input_scale)
            else:
                tr = presynaptic_trace(tr, x_t, beta, p.input_scale)
            if x_step is not None:
                tr = self._round(tr, x_step)
            if per_synapse:
                filtered_synaptic_eligibility_(ebar, psi[:, t], tr, kappa, gain)
            else:
                filtered_eligibility_(ebar, psi[:, t], tr, kappa, gain)
            if e_step is not None:
                ebar.copy_(self._round(ebar, e_step))
            ebar_sum.add_(ebar)
            s_prev = s[:, t]
        st[key] = tr
        if p.reset == "zero":
            st[f"s_prev{i}"] = s_prev

    def _chunks(self, x):
        """Blocks of up to ``chunk`` steps (K, B, in) from a (T, B, in) tensor or an iterable of steps."""
        if isinstance(x, torch.Tensor):
            if x.dim() != 3 or x.shape[-1] != self.model.sizes[0]:
                raise ValueError(f"online pass expects input of shape (T, B, {self.model.sizes[0]}), got {tuple(x.shape)}")
            yield from torch.split(x, self.chunk)
            return
        buf = []
        for x_t in x:
            if x_t.dim() != 2 or x_t.shape[-1] != self.model.sizes[0]:
                raise ValueError(f"online pass expects steps of shape (B, {self.model.sizes[0]}), got {tuple(x_t.shape)}")
            buf.append(x_t)
            if len(buf) == self.chunk:
                yield torch.stack(buf)
                buf = []
        if buf:
            yield torch.stack(buf)

    @staticmethod
    def _trace_sum(st: dict, key: str, s: torch.Tensor, kappa: float, gain) -> None:
        """Carry a κ-filtered presynaptic trace of s (M, K, B, n) and its running sum in ``st``."""
        tr = presynaptic_trace_chunk(st.get(key), s, kappa, gain, time_dim=1)
        st[key] = tr[:, -1]
        total = tr.sum(1)
        st[f"{key}_sum"] = total if st.get(f"{key}_sum") is None else st[f"{key}_sum"] + total

    def set_grads(self, grads: list[torch.Tensor], noise: list[torch.Tensor] | None, scale: float = 1.0) -> None:
        """Write ∂C/∂μ (and ∂C/∂σ = Σ_m ε_m g_m with ``noise``) into the layers' ``.grad``."""
        for i, layer in enumerate(self.model.layers):
            gmu, gsig = mc_gradients(grads[i], None if noise is None else noise[i])
            pairs = [(layer.weight_mu, layer.weight_sigma, slice(0, layer.in_features))]
            if self._bias(i):
                pairs.append((layer.bias_mu, layer.bias_sigma, layer.in_features))
            for mu, sig, idx in pairs:
                mu.grad = (gmu[:, idx] * scale).reshape(mu.shape).contiguous()
                if gsig is not None:
                    sig.grad = (gsig[:, idx] * scale).reshape(sig.shape).contiguous()

    def extra_state(self) -> dict:
        state = {"feedback": self.feedback, "feedback_seed": self.feedback_seed,
                 "feedback_matrices": [None if f is None else f.clone() for f in self.feedback_matrices]}
        if self.trace_bits:
            state["trace_steps"] = None if self.trace_steps is None else [list(t) for t in self.trace_steps]
            state["trace_rng"] = None if self._trace_rng is None else self._trace_rng.get_state()
        return state

    def load_extra_state(self, state: dict) -> None:
        for dst, src in zip(self.feedback_matrices, state.get("feedback_matrices", [])):
            if dst is not None and src is not None:
                dst.copy_(src)
        if self.trace_bits and state.get("trace_steps") is not None:
            self.trace_steps = [tuple(t) for t in state["trace_steps"]]
        if self.trace_bits and state.get("trace_rng") is not None:
            dev = self.model.layers[0].weight_mu.device
            self._trace_rng = torch.Generator(device=dev)
            self._trace_rng.set_state(state["trace_rng"])


class OnlineMESURule(MESURule):
    """MESU on eligibility-trace gradients (no BPTT): one update per presentation of T steps.
    Hyperparameters: MESU's, plus ``feedback``, ``feedback_seed``, ``chunk`` (see
    :class:`OnlineEligibility`) and ``fixed_point_bits``.

    fixed_point_bits: 0 (float32) or b ≥ 2: after every update μ and σ are stored on b-bit signed
    fixed-point grids with stochastic rounding (:func:`mesu_snn.functional.fixed_point.fixed_point_round`),
    one step per tensor fixed at construction: μ covers ±4·max|μ₀|, σ covers [Δ, max(σ₀, σ_prior)]
    (σ ≥ one step). trace_bits: 0 (float) or b ≥ 2: the traces x̄ and ē on b-bit grids too (see
    :class:`OnlineEligibility`); the learning signal, ψ and the Σē accumulator stay float."""
    name, bayesian, online = "mesu_online", True, True
    bounds = {**MESURule.bounds, "feedback": FEEDBACKS, "feedback_seed": "int>=0", "chunk": "int>=1",
              "fixed_point_bits": "int>=0", "trace_bits": "int>=0"}

    def __init__(self, model: nn.Module, memory: float = 300_000, sigma_prior: float | str = 0.1, mu_prior: float = 0.0,
                 lr_mu: float = 1.0, lr_sigma: float = 1.0, clamp_grad: float | None = 0.5,
                 feedback: str = "symmetric", feedback_seed: int = 0, chunk: int = 16, fixed_point_bits: int = 0,
                 trace_bits: int = 0, per_layer: dict | None = None):
        args = dict(locals())
        args.pop("per_layer")       # a mapping: checked by MESU, group by group
        if sigma_prior == "init":   # each layer's prior σ is its initial σ (MESU checks the rest)
            args.pop("sigma_prior")
        self.check_hyperparameters(args)
        if isinstance(fixed_point_bits, bool) or not isinstance(fixed_point_bits, int) or fixed_point_bits == 1 \
                or not 0 <= fixed_point_bits <= 32:
            raise ValueError(f"fixed_point_bits must be 0 (float) or an int in [2, 32], got {fixed_point_bits!r}")
        self.engine = OnlineEligibility(model, feedback, feedback_seed, chunk, trace_bits)
        super().__init__(model, memory=memory, sigma_prior=sigma_prior, mu_prior=mu_prior, lr_mu=lr_mu,
                         lr_sigma=lr_sigma, clamp_grad=clamp_grad, per_layer=per_layer)
        # each σ's own prior (per_layer may give a layer another one; "init": σ₀ itself)
        prior_of = {id(s): g["sigma_prior"] for g in self.optimizer.param_groups if g["kind"] == "bayes"
                    for s in g["params"][1::2]}
        self.hyperparameters.update(feedback=feedback, feedback_seed=int(feedback_seed), chunk=chunk,
                                    fixed_point_bits=fixed_point_bits, trace_bits=trace_bits)
        self.fixed_point_bits = fixed_point_bits
        self._grids = []
        if fixed_point_bits:
            self._rounding = torch.Generator(device="cpu").manual_seed(int(feedback_seed) + 7919)
            for layer in model.layers:
                for mu, sig in ((layer.weight_mu, layer.weight_sigma), (layer.bias_mu, layer.bias_sigma)):
                    if mu is None:
                        continue
                    smu = fixed_point_step(4.0 * float(mu.detach().abs().max()), fixed_point_bits)
                    top = float(sig.detach().max())   # sigma_prior="init": the prior is σ₀ itself
                    sp = prior_of.get(id(sig), sigma_prior)
                    ssig = fixed_point_step(top if sigma_prior == "init" or isinstance(sp, torch.Tensor)
                                            else max(top, float(sp)), fixed_point_bits)
                    self._grids.append((mu, sig, smu, ssig))
            self._to_grid()

    @torch.no_grad()
    def _to_grid(self) -> None:
        b, g = self.fixed_point_bits, self._rounding
        for mu, sig, smu, ssig in self._grids:
            mu.copy_(fixed_point_round(mu.cpu(), smu, b, g).to(mu.device))
            sig.copy_(fixed_point_round(sig.cpu(), ssig, b, g, minimum=ssig).to(sig.device))

    def step(self) -> None:
        super().step()
        if self.fixed_point_bits:
            self._to_grid()

    def gradients(self, x, y: torch.Tensor, samples: int, generator: torch.Generator | None = None):
        """Draw M weight samples, run the window, set μ.grad, σ.grad. Returns the logits (M, B, K)."""
        weights, noise = self.engine.sample_weights(samples, generator)
        out, grads = self.engine.run(x, y, weights)
        self.engine.set_grads(grads, noise)
        return out

    def train_step(self, x, y: torch.Tensor, samples: int, generator: torch.Generator | None = None):
        """One online update on the batch (x (T, B, in) or its steps, y (B,)); returns (loss, logits)."""
        self.zero_grad()
        out = self.gradients(x, y, samples, generator)
        self.last_batch_size = int(y.shape[0])
        self.step()
        return nll_loss(out, y), out

    def extra_state(self) -> dict:
        state = self.engine.extra_state()
        if self.fixed_point_bits:
            state["rounding_rng"] = self._rounding.get_state()
        return state

    def load_extra_state(self, state: dict) -> None:
        self.engine.load_extra_state(state)
        if self.fixed_point_bits and "rounding_rng" in state:
            self._rounding.set_state(state["rounding_rng"])


class OnlineSGDRule(Rule):
    """Plain SGD on eligibility-trace gradients of the mean network (w = μ, σ frozen), the loss
    averaged over the batch as for ``sgd``. Same ``feedback`` options as ``mesu_online``."""
    name, online = "sgd_online", True
    bounds = {"lr": ">0", "momentum": "[0,1)", "feedback": FEEDBACKS, "feedback_seed": "int>=0", "chunk": "int>=1",
              "trace_bits": "int>=0"}

    def __init__(self, model: nn.Module, lr: float = 0.01, momentum: float = 0.0, feedback: str = "symmetric",
                 feedback_seed: int = 0, chunk: int = 16, trace_bits: int = 0):
        self.check_hyperparameters(locals())
        self.engine = OnlineEligibility(model, feedback, feedback_seed, chunk, trace_bits)
        params = mean_mode_parameters(model)
        super().__init__(model, make_base_optimizer(params, "sgd", lr, momentum), "mean",
                         dict(lr=lr, momentum=momentum, feedback=feedback, feedback_seed=int(feedback_seed),
                              chunk=chunk, trace_bits=trace_bits))

    def train_step(self, x, y: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None):
        self.zero_grad()
        out, grads = self.engine.run(x, y, self.engine.mean_weights())
        self.engine.set_grads(grads, None, scale=1.0 / y.shape[0])
        self.step()
        return nll_loss(out, y) / y.shape[0], out

    def extra_state(self) -> dict:
        return self.engine.extra_state()

    def load_extra_state(self, state: dict) -> None:
        self.engine.load_extra_state(state)
