"""Eligibility traces for feed-forward LIF layers: the gradient of a spiking network computed
forward in time, with O(1) memory in the sequence length T (pure tensor functions).

References: e-prop, Bellec et al. 2020, "A solution to the learning dilemma for recurrent
networks of spiking neurons", Nat. Commun. 11:3625; OTTT, Xiao et al. 2022, "Online training
through time for spiking neural networks", NeurIPS; DECOLLE, Kaiser, Mostafa & Neftci 2020,
"Synaptic plasticity dynamics for deep continuous local learning", Front. Neurosci. 14:424.

Setting and shapes. ``M`` Monte-Carlo weight samples, ``B`` batch, ``J`` postsynaptic and ``I``
presynaptic neurons. The library's LIF (:mod:`mesu_snn.functional.lif`) with the subtractive
reset (or none; the zero reset and per-neuron β further below), decay β, gain γ (``input_scale``), threshold θ and surrogate S::

    v_j(t) = β v_j(t−1) + γ I_j(t) − θ r_j(t),   I_j(t) = Σ_i w_ji x_i(t) + b_j,   s_j(t) = S(v_j(t) − θ)

(``reset_delay=True``: r_j(t) = s_j(t−1); ``False``: the reset of s_j(t) is applied after the
spike is read). **The reset's contribution to the gradient is dropped** (as e-prop does for its
LIF, and as the library's default ``detach_reset=True`` does for BPTT): r is treated as a
constant, so ∂v_j(t)/∂w_ji = β ∂v_j(t−1)/∂w_ji + γ x_i(t), which does not depend on j. Hence

* presynaptic trace (one per *presynaptic neuron*, filtered with the membrane decay β):
  x̄_i(t) = β x̄_i(t−1) + γ x_i(t)                                        (:func:`presynaptic_trace`)
* surrogate derivative ψ_j(t) = S'(v_j(t) − θ) at the membrane the spike was read from
                                                                         (:func:`surrogate_derivative`)
* eligibility e_ji(t) = ∂s_j(t)/∂w_ji = ψ_j(t) x̄_i(t)                      (:func:`eligibility`)
* low-pass filtered eligibility (e-prop's ē, filter = the readout's decay κ, gain γ_out):
  ē_ji(t) = κ ē_ji(t−1) + γ_out e_ji(t)                                  (:func:`filtered_eligibility`)

Readout and learning signal. The library's ``"membrane"`` readout is a non-spiking leaky
integrator u_k(t) = κ u_k(t−1) + γ_out Σ_j W_kj s_j(t) averaged over the T steps, z_k = (1/T)
Σ_t u_k(t), and the loss is the NLL of z at the end (:func:`mesu_snn.nll_loss`). Then, exactly,
∂z_k/∂w_ji = W_kj · (1/T) Σ_t ē_ji(t): the ē filter carries the readout's temporal kernel, so
with the error δ_k = ∂C/∂z_k (:func:`readout_error`) known at the end of the window,

    ∂C/∂w_ji = L_j · Ē_ji,   L_j = Σ_k W_kj δ_k,   Ē_ji = (1/T) Σ_t ē_ji(t)

for the last hidden layer: the eligibility gradient *equals* the BPTT gradient with the reset
detached (tests/test_functional_eligibility.py checks it to 1e-5). The output weights get
∂C/∂W_kj = δ_k · (1/T) Σ_t ū_j(t) with ū the presynaptic trace filtered with κ, γ_out (ψ ≡ 1:
the readout does not spike). Bias: an input that is 1 at every step. The learning signal L_j
arrives once per window of T steps (a three-factor rule with a delayed third factor); the
temporal credit assignment is carried by the traces. Learning signals (:func:`learning_signal`):

* ``symmetric``: L = δ·W of the layer above, per MC sample (exact for the last hidden layer);
  a deeper layer ℓ gets L^ℓ = (L^{ℓ+1} ⊙ ψ̄^{ℓ+1}) W^{ℓ+1} · γ/(1 − β^{ℓ+1}), ψ̄ the time-averaged
  surrogate derivative of the layer above (a rate approximation of the path through its
  membrane; not exact);
* ``random``: L = δ·B with B a fixed random matrix per hidden layer (e-prop's random
  broadcast / direct feedback alignment; :func:`random_feedback`, seeded);
* ``local``: each hidden layer has a fixed random readout R^ℓ (DECOLLE), its own local logits
  z^ℓ = R^ℓ · (1/T) Σ_t ū^ℓ(t) and error δ^ℓ, and L^ℓ = δ^ℓ·R^ℓ.

Zero reset (``reset="zero"``, the exportable convention). With ``reset_delay=True`` the step is
v_j(t) = β (1 − r_j(t)) v_j(t−1) + (1 − r_j(t)) β v_reset + γ I_j(t) with r_j(t) = s_j(t−1); with
``False`` the membrane is overwritten after the spike is read. Detaching the reset (r constant)
still leaves its *multiplicative* path: ∂v_j(t)/∂v_j(t−1) = β (1 − s_j(t−1)). So the trace that
equals BPTT with the reset detached (the library's ``detach_reset=True``) is **per synapse and
zeroed at the postsynaptic spike** (the e-prop variant for a reset-to-zero neuron):

  x̃_ji(t) = β_j (1 − s_j(t−1)) x̃_ji(t−1) + γ x_i(t),   e_ji(t) = ψ_j(t) x̃_ji(t)
                                   (:func:`synaptic_trace`, :func:`synaptic_trace_decay`)

for both timings (with ``reset_delay=False`` x̃ is the trace before the step's reset and ψ is
read from the pre-reset membrane, :func:`pre_reset_membrane`). The per-presynaptic-neuron trace
x̄ (not zeroed) differs measurably from BPTT (tests/test_functional_eligibility.py).

Per-neuron β (a fixed (J,) tensor in a hidden layer): the trace is filtered with the
*postsynaptic* β_j, so it is per synapse too, x̃_ji(t) = β_j x̃_ji(t−1) + γ x_i(t), (B, J, I) for the
input layer (shared by the samples) and (M, B, J, I) above it or with the zero reset
(:func:`needs_synaptic_trace`). The output layer's β must be one number: it is the ē filter κ of
every hidden layer. The deep symmetric signal uses γ/(1 − β_j) per neuron.

Spike-count readout (``readout="count"``): z_k = Σ_t s_k(t) of a spiking output layer. Then
∂z_k/∂W_kj = Σ_t ψ_k(t) ū_kj(t) exactly (ū the output layer's own presynaptic trace, zeroed at
its spikes for the zero reset): the output layer has eligibility traces like a hidden layer,
with ē = e (no filter) summed over the window. A hidden layer below it has, exactly,
∂C/∂w_ji = Σ_k δ_k W_kj Σ_t ψ_k(t) ē_ji(t), which couples the window-end error to the output's
ψ_k(t) at every step (K accumulators per synapse). The rule uses the rate approximation
ψ_k(t) → ψ̄_k: the output sends down δ̃_k = δ_k Σ_t ψ_k(t) (:func:`count_error`) and
L_j = Σ_k W_kj δ̃_k (symmetric) or Σ_k B_kj δ̃_k (random), with Ē the mean of ē filtered with the
output β (its reset ignored). It is exact when ψ_k is constant over the window (the
straight-through surrogate, tested) and for the subtractive output reset; with the fast-sigmoid
surrogate the cosine with BPTT was 0.98 (subtract) and 0.78-0.86 (zero reset) in the test.

Fixed-point traces (``trace_bits`` in :class:`mesu_snn.rules.online.OnlineEligibility`): after
every step x̄ (x̃) and ē are put on b-bit signed grids with stochastic rounding
(:func:`mesu_snn.functional.fixed_point.fixed_point_round`), one step per layer and variable from
the static worst case (:func:`trace_ranges`: x̄ ≤ γ x_max Σ β^t, ē ≤ gain ψ_max x̄_max Σ κ^t);
ψ, L and the Σē accumulator stay float.

Memory (per layer with J×I synapses, M samples, batch B): the weight draws and their ε
(M per synapse, as BPTT), ē and Ē (2·M·B per synapse), x̄ (B or M·B per presynaptic neuron) — or,
for the zero reset / per-neuron β, x̃ (B or M·B more per synapse: 3·M·B in all) — v (M·B per
neuron); nothing grows with T. BPTT keeps O(T·M·B·(I + J)) activations instead.

Monte-Carlo σ gradient. A sample holds w = μ + σ·ε for the whole window and the dynamics see
w only, so ∂C/∂μ = Σ_m g_m and ∂C/∂σ = Σ_m ε_m g_m with g_m the eligibility gradient of
sample m (its share 1/M of the loss included) (:func:`mc_gradients`). This needs the draw ε per
synapse: the local reparameterisation estimator (``estimator="local"``), which samples the
pre-activations and never draws ε, has no such gradient here (the online rule refuses it).
"""
from __future__ import annotations

import math
from typing import Union

import torch

from .lif import LIFParameters

Scalar = Union[float, torch.Tensor]

__all__ = ["presynaptic_trace", "presynaptic_trace_chunk", "surrogate_derivative", "eligibility", "filtered_eligibility", "filtered_eligibility_", "eligibility_chunk_", "readout_error",
           "learning_signal", "deep_symmetric_signal", "random_feedback", "eligibility_gradient",
           "trace_gradient", "mc_gradients", "check_online_lif", "ONLINE_RESETS", "scalar_beta",
           "needs_synaptic_trace", "synaptic_trace", "synaptic_trace_decay", "pre_reset_membrane",
           "count_error", "trace_ranges", "filtered_synaptic_eligibility_"]

#: resets the eligibility traces support (the zero reset with a per-synapse trace, see below)
ONLINE_RESETS = ("subtract", "none", "zero")


def scalar_beta(p: LIFParameters) -> float | None:
    """β as one float if it is a number or a tensor whose entries are all equal, else None (per neuron)."""
    b = p.beta
    if not isinstance(b, torch.Tensor):
        return min(max(float(b), 0.0), 1.0)
    flat = b.detach().reshape(-1)
    if flat.numel() == 0 or bool((flat == flat[0]).all()):
        return min(max(float(flat[0]), 0.0), 1.0) if flat.numel() else None
    return None


def needs_synaptic_trace(p: LIFParameters) -> bool:
    """True if the presynaptic trace of a layer with these neurons is per synapse x̃_ji rather than
    per presynaptic neuron x̄_i: the zero reset (the trace is zeroed at the postsynaptic neuron's
    spikes) or a per-neuron β (the trace is filtered with the postsynaptic β_j)."""
    return p.reset == "zero" or scalar_beta(p) is None


def synaptic_trace_decay(p: LIFParameters, spikes_prev: torch.Tensor | None) -> Scalar:
    """The per-step decay of the per-synapse trace, one factor per postsynaptic neuron j:
    β_j, times (1 − s_j(t−1)) for the zero reset (the detached reset keeps its multiplicative
    path: ∂v_j(t)/∂v_j(t−1) = β_j (1 − s_j(t−1)); ``spikes_prev`` (…, J) the previous step's spikes,
    None at the first step)."""
    b = p.beta.clamp(0.0, 1.0) if isinstance(p.beta, torch.Tensor) else min(max(float(p.beta), 0.0), 1.0)
    if p.reset == "zero" and spikes_prev is not None:
        return b * (1.0 - spikes_prev)
    return b


def synaptic_trace(trace: torch.Tensor, x: torch.Tensor, decay: Scalar, input_scale: Scalar = 1.0) -> torch.Tensor:
    """x̃_ji(t) = d_j(t)·x̃_ji(t−1) + γ·x_i(t): trace (..., J, I), x (..., I), decay (..., J) or a
    number (:func:`synaptic_trace_decay`) -> (..., J, I)."""
    d = decay.unsqueeze(-1) if isinstance(decay, torch.Tensor) and decay.dim() > 0 else decay
    return d * trace + input_scale * x.unsqueeze(-2)


def pre_reset_membrane(v: torch.Tensor, current: torch.Tensor, v0: torch.Tensor | None, p: LIFParameters,
                       time_dim: int = 1) -> torch.Tensor:
    """The membrane before the reset, v_leak + β (v(t−1) − v_leak) + γ I(t), from the post-reset
    membranes v that :func:`~mesu_snn.functional.lif.lif_step` returns with ``reset_delay=False``
    (time on ``time_dim``), the currents and the membrane before the first step (None: v_leak).
    The zero reset overwrites the membrane, so ψ must be read from this."""
    vt = v.movedim(time_dim, 0)
    first = torch.zeros_like(vt[0]) + p.v_leak if v0 is None else v0
    prev = torch.cat([first.unsqueeze(0), vt[:-1]], 0)
    b = p.beta.clamp(0.0, 1.0) if isinstance(p.beta, torch.Tensor) else min(max(float(p.beta), 0.0), 1.0)
    pre = p.v_leak + b * (prev - p.v_leak) + p.input_scale * current.movedim(time_dim, 0)
    return pre.movedim(0, time_dim)


def count_error(error: torch.Tensor, psi_sum_out: torch.Tensor) -> torch.Tensor:
    """The error a spiking (``"count"``) readout sends down: δ̃_k = δ_k Σ_t ψ_k(t) (the rate
    approximation of Σ_t δ_k ψ_k(t) ē_ji(t) ≈ δ_k ψ̄_k Σ_t ē_ji(t); exact when ψ_k is constant
    over the window). error, psi_sum_out (M, B, K)."""
    return error * psi_sum_out


def trace_ranges(p: LIFParameters, input_max: float, steps: int, kappa: float, gain: Scalar = 1.0) -> tuple[float, float]:
    """Static ranges (x̄ max, ē max) of a layer's traces for the fixed-point variant, from the
    worst case: x̄ ≤ γ·x_max·Σ_t β^t, ē ≤ gain·ψ_max·x̄_max·Σ_t κ^t (sums over the window's
    ``steps``; β = max β_j; ψ_max = S'(0))."""
    b = float(p.beta.max()) if isinstance(p.beta, torch.Tensor) else float(p.beta)
    b = min(max(b, 0.0), 1.0)

    def geo(r):
        return float(steps) if r >= 1.0 else (1.0 - r ** steps) / (1.0 - r)
    psi_max = float(p.surrogate.grad(torch.zeros((), dtype=torch.float64)))
    x_max = abs(float(p.input_scale)) * max(float(input_max), 1e-12) * geo(b)
    return x_max, abs(float(gain)) * psi_max * x_max * geo(float(kappa))


def check_online_lif(p: LIFParameters, where: str = "LIF") -> None:
    """Raise ValueError if the eligibility traces of this module do not apply to ``p`` (β of
    more than one dimension, a per-neuron gain γ)."""
    if p.reset not in ONLINE_RESETS:
        raise ValueError(f"{where}: online eligibility traces support reset in {ONLINE_RESETS}, got {p.reset!r}")
    if isinstance(p.beta, torch.Tensor) and p.beta.dim() > 1:
        raise ValueError(f"{where}: online eligibility traces need a scalar or a 1-D per-neuron beta, "
                         f"got shape {tuple(p.beta.shape)}")
    if isinstance(p.input_scale, torch.Tensor) and p.input_scale.numel() > 1:
        raise ValueError(f"{where}: online eligibility traces need one scalar input_scale")


def presynaptic_trace(trace: torch.Tensor, x: torch.Tensor, beta: Scalar, input_scale: Scalar = 1.0) -> torch.Tensor:
    """x̄(t) = β·x̄(t−1) + γ·x(t). trace, x: (..., I) (a zero trace before the first step)."""
    return beta * trace + input_scale * x


def presynaptic_trace_chunk(trace: torch.Tensor | None, x: torch.Tensor, beta: float, input_scale: Scalar = 1.0,
                            time_dim: int = 0) -> torch.Tensor:
    """:func:`presynaptic_trace` over K steps at once: x (..., K, ...) with time on ``time_dim``,
    trace the value before the first step (None: zero) -> the K traces, same shape as x
    (x̄(k) = β^(k+1) x̄(−1) + γ Σ_{k'≤k} β^(k−k') x(k'): one (K × K) matrix product)."""
    k = x.shape[time_dim]
    idx = torch.arange(k, dtype=torch.float64)
    diff = idx[:, None] - idx[None, :]
    decay = torch.where(diff >= 0, float(beta) ** diff.clamp_min(0), 0.0).to(x.dtype).to(x.device)
    xt = x.movedim(time_dim, 0)
    out = torch.tensordot(decay, xt, dims=([1], [0])) * input_scale
    if trace is not None:
        powers = (float(beta) ** (idx + 1)).to(x.dtype).to(x.device)
        out = out + powers.view((k,) + (1,) * (xt.dim() - 1)) * trace.unsqueeze(0)
    return out.movedim(0, time_dim)


def surrogate_derivative(v: torch.Tensor, p: LIFParameters, spikes: torch.Tensor | None = None,
                         pre_reset: torch.Tensor | None = None) -> torch.Tensor:
    """ψ(t) = S'(v(t) − θ) for the membrane ``v`` that :func:`~mesu_snn.functional.lif.lif_step`
    returned with the ``spikes``. With ``reset_delay=True`` that membrane is the one the spike was
    read from; with ``reset_delay=False`` it is post-reset: for the subtractive reset the
    pre-reset v + θ·s is used (``spikes`` required), for the zero reset the pre-reset membrane
    must be given (``pre_reset``, :func:`pre_reset_membrane`)."""
    if not p.reset_delay and p.reset == "subtract":
        if spikes is None:
            raise ValueError("surrogate_derivative: reset_delay=False needs the step's spikes")
        v = v + spikes * p.threshold
    elif not p.reset_delay and p.reset == "zero":
        if pre_reset is None:
            raise ValueError("surrogate_derivative: the zero reset with reset_delay=False needs the pre-reset "
                             "membrane (pre_reset_membrane)")
        v = pre_reset
    return p.surrogate.grad(v - p.threshold)


def eligibility(psi: torch.Tensor, trace: torch.Tensor) -> torch.Tensor:
    """e_ji = ψ_j·x̄_i: psi (M, B, J), trace (B, I) (input shared by the samples) or (M, B, I)
    -> (M, B, J, I)."""
    return psi.unsqueeze(-1) * trace.unsqueeze(-2)


def filtered_eligibility(ebar: torch.Tensor, psi: torch.Tensor, trace: torch.Tensor, kappa: Scalar,
                         gain: Scalar = 1.0) -> torch.Tensor:
    """ē(t) = κ·ē(t−1) + gain·ψ ⊗ x̄ (e-prop's low-pass filtered eligibility). ebar (M, B, J, I)."""
    return filtered_eligibility_(ebar.clone(), psi, trace, kappa, gain)


def filtered_eligibility_(ebar: torch.Tensor, psi: torch.Tensor, trace: torch.Tensor, kappa: Scalar,
                          gain: Scalar = 1.0) -> torch.Tensor:
    """:func:`filtered_eligibility` in place on ``ebar`` (the per-step hot path: no allocation of
    the per-synapse tensor); returns ``ebar``."""
    return ebar.mul_(kappa).addcmul_(psi.unsqueeze(-1), trace.unsqueeze(-2), value=gain)


def filtered_synaptic_eligibility_(ebar: torch.Tensor, psi: torch.Tensor, trace: torch.Tensor, kappa: Scalar,
                                   gain: Scalar = 1.0) -> torch.Tensor:
    """ē(t) = κ·ē(t−1) + gain·ψ_j x̃_ji with a per-synapse trace x̃ (..., J, I) (zero reset,
    per-neuron β), in place on ``ebar`` (M, B, J, I); psi (M, B, J). Returns ``ebar``."""
    return ebar.mul_(kappa).addcmul_(psi.unsqueeze(-1), trace, value=gain)


def eligibility_chunk_(ebar: torch.Tensor, ebar_sum: torch.Tensor, psi: torch.Tensor, trace: torch.Tensor,
                       kappa: float, gain: Scalar = 1.0) -> None:
    """K steps of ``ē ← κ ē + gain·ψ(t) ⊗ x̄(t); Σē ← Σē + ē`` at once, in place (the same
    recurrence, evaluated with two matrix products instead of K rank-1 updates; memory O(K), not
    O(T)). psi (M, K, B, J); trace (K, B, I) (shared input) or (M, K, B, I); ebar, ebar_sum
    (M, B, J, I). With d = 0..K−1 steps to the chunk's end (k = K−1−d):

        ē_end   = κ^K ē + gain Σ_k κ^(K−1−k) e(k)
        Σ ē    += (Σ_{d=1..K} κ^d) ē + gain Σ_k (Σ_{d=0..K−1−k} κ^d) e(k)
    """
    k = psi.shape[1]
    powers = kappa ** torch.arange(k, dtype=torch.float64)                # κ^0 .. κ^(K−1)
    decay_w = (gain * powers.flip(0)).to(psi.dtype).to(psi.device)        # κ^(K−1−k)
    sum_w = (gain * torch.cumsum(powers, 0).flip(0)).to(psi.dtype).to(psi.device)
    shape = (1, k, 1, 1)
    eq = "mkbj,kbi->mbji" if trace.dim() == 3 else "mkbj,mkbi->mbji"
    ebar_sum.add_(ebar, alpha=float(kappa * torch.cumsum(powers, 0)[-1]))
    ebar_sum.add_(torch.einsum(eq, psi * sum_w.view(shape), trace))
    ebar.mul_(float(kappa ** k)).add_(torch.einsum(eq, psi * decay_w.view(shape), trace))


def readout_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """δ = ∂C/∂z of C = :func:`mesu_snn.nll_loss` (mean over the M samples, sum over the batch):
    (softmax(z) − onehot(y)) / M. logits (M, B, K), y (B,) -> (M, B, K)."""
    p = torch.softmax(logits, dim=-1)
    onehot = torch.nn.functional.one_hot(y.long(), logits.shape[-1]).to(p.dtype)
    return (p - onehot) / logits.shape[0]


def learning_signal(error: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
    """L_j = Σ_k F_kj δ_k. error (M, B, K); feedback (M, K, J) (per-sample weights above:
    symmetric) or (K, J) (a fixed matrix: random / local readout) -> (M, B, J)."""
    if feedback.dim() == 2:
        return error @ feedback
    return torch.bmm(error, feedback)


def deep_symmetric_signal(signal_above: torch.Tensor, psi_mean_above: torch.Tensor, weight_above: torch.Tensor,
                          beta_above: Scalar, input_scale_above: Scalar = 1.0, steps: int | None = None) -> torch.Tensor:
    """The symmetric learning signal of a hidden layer below another hidden layer (an
    approximation, see the module docstring): (L ⊙ ψ̄ ⊙ γ/(1 − β)) W with ``steps`` T capping
    1/(1 − β) (β = 1). signal_above, psi_mean_above (M, B, J'); weight_above (M, J', J);
    beta_above a number or a per-neuron (J',) tensor."""
    if isinstance(beta_above, torch.Tensor) and beta_above.dim() > 0:
        b = beta_above.to(signal_above.dtype).clamp(0.0, 1.0)
        cap = float(steps) if steps is not None else float("inf")
        gain = torch.where(b >= 1.0, torch.full_like(b, cap), 1.0 / (1.0 - b).clamp_min(1e-300)).clamp_max(cap)
        return torch.bmm(signal_above * psi_mean_above * gain, weight_above) * input_scale_above
    beta_above = float(beta_above)
    gain = float(steps) if beta_above >= 1.0 else 1.0 / (1.0 - beta_above)
    if steps is not None:
        gain = min(gain, float(steps))
    return torch.bmm(signal_above * psi_mean_above, weight_above) * (input_scale_above * gain)


def random_feedback(out_features: int, in_features: int, seed: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """A fixed random (out, in) feedback / local-readout matrix, N(0, 1/in), from ``seed`` (the
    global RNG untouched)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    m = torch.randn((out_features, in_features), generator=g, dtype=torch.float64) / math.sqrt(in_features)
    return m.to(dtype=dtype, device=device)


def eligibility_gradient(signal: torch.Tensor, ebar_mean: torch.Tensor) -> torch.Tensor:
    """g_ji = Σ_b L_j Ē_ji per sample: signal (M, B, J), ebar_mean (M, B, J, I) -> (M, J, I)."""
    return torch.einsum("mbj,mbji->mji", signal, ebar_mean)


def trace_gradient(error: torch.Tensor, trace_mean: torch.Tensor) -> torch.Tensor:
    """Output layer: g_kj = Σ_b δ_k ū_j per sample. error (M, B, K), trace_mean (M, B, J) or (B, J)
    -> (M, K, J)."""
    if trace_mean.dim() == 2:
        trace_mean = trace_mean.expand(error.shape[0], *trace_mean.shape)
    return torch.bmm(error.transpose(1, 2), trace_mean)


def mc_gradients(grads: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(∂C/∂μ, ∂C/∂σ) = (Σ_m g_m, Σ_m ε_m g_m) from per-sample gradients g (M, ...) of w = μ + σ·ε
    and the draws' ε (M, ...); ``noise=None`` (deterministic weights): (Σ_m g_m, None)."""
    gmu = grads.sum(0)
    if noise is None:
        return gmu, None
    m = grads.shape[0]
    gsig = torch.bmm(noise.reshape(m, 1, -1).transpose(0, 2), grads.reshape(m, -1, 1).transpose(0, 1))
    return gmu, gsig.reshape(grads.shape[1:])
