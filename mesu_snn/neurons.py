"""``LIF``: a module over :mod:`mesu_snn.functional.lif` (the maths lives there)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .bounds import check_number
from .functional.lif import RESETS, LIFParameters, initial_membrane, lif_sequence, lif_step
from .functional.surrogate import FastSigmoid, make_surrogate
from .kernels.lif_fused import lif_sequence_fused, supports
from .kernels.switch import fast_paths_enabled

__all__ = ["LIF"]


class LIF(nn.Module):
    """Multi-step leaky integrate-and-fire population.

    Called on input currents ``x`` of shape (T, B, ...) it returns spikes (T, B, ...)
    (and the membranes (T, B, ...) with ``return_membrane=True``). Defaults reproduce
    ``snntorch.Leaky(beta, threshold, reset_mechanism="subtract")`` exactly; use
    :meth:`norse_box` for Norse's ``LIFBoxCell``.

    beta, threshold: floats or tensors broadcastable to the neuron shape (per-neuron values);
    ``learn_beta``/``learn_threshold`` make them trainable parameters.
    surrogate: a surrogate instance or name (``"fast_sigmoid"``, ``("atan", 2.0)``, ...).
    """

    def __init__(self, beta=0.9, threshold=1.0, reset: str = "subtract", surrogate=FastSigmoid(25.0),
                 reset_delay: bool = True, detach_reset: bool = True, learn_beta: bool = False,
                 learn_threshold: bool = False, v_leak=0.0, v_reset=0.0, input_scale=1.0):
        super().__init__()
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        b = torch.as_tensor(beta, dtype=torch.get_default_dtype())
        check_number("LIF beta", b, "[0,1]", "the membrane decay per step")
        th = torch.as_tensor(threshold, dtype=torch.get_default_dtype())
        check_number("LIF threshold", th, ">0")
        for name, v in (("v_leak", v_leak), ("v_reset", v_reset), ("input_scale", input_scale)):
            check_number(f"LIF {name}", torch.as_tensor(v, dtype=torch.get_default_dtype()), "real")
        # plain numbers stay exact Python floats (no float32 rounding) for the functional core
        self._scalar_beta = None if (learn_beta or b.dim() > 0) else \
            (float(beta) if isinstance(beta, (int, float)) else float(b))
        self._scalar_threshold = None if (learn_threshold or th.dim() > 0) else \
            (float(threshold) if isinstance(threshold, (int, float)) else float(th))
        if learn_beta:
            self.beta = nn.Parameter(b.clone())
        else:
            self.register_buffer("beta", b.clone())
        if learn_threshold:
            self.threshold = nn.Parameter(th.clone())
        else:
            self.register_buffer("threshold", th.clone())
        self.reset, self.reset_delay, self.detach_reset = reset, reset_delay, detach_reset
        self.surrogate = make_surrogate(surrogate)
        self.v_leak, self.v_reset, self.input_scale = v_leak, v_reset, input_scale

    @classmethod
    def norse_box(cls, tau_mem_inv: float = 100.0, v_leak: float = 0.0, v_th: float = 1.0,
                  v_reset: float = 0.0, dt: float = 1e-3) -> "LIF":
        """A LIF equal to ``norse.torch.LIFBoxCell(LIFBoxParameters(tau_mem_inv, v_leak, v_th, v_reset), dt)``
        unrolled over time (tau_mem_inv in 1/s, dt in s)."""
        p = LIFParameters.norse_box(tau_mem_inv, v_leak, v_th, v_reset, dt)
        return cls(beta=p.beta, threshold=p.threshold, reset=p.reset, surrogate=p.surrogate,
                   reset_delay=p.reset_delay, detach_reset=p.detach_reset, v_leak=p.v_leak,
                   v_reset=p.v_reset, input_scale=p.input_scale)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # keep the exact-float copies of fixed scalar beta/threshold in step with the loaded
        # buffers; a buffer that only rounds the cached value (the same model reloaded) keeps it
        def same(buf, cached):
            return float(buf) == float(torch.tensor(cached, dtype=buf.dtype))
        if self._scalar_beta is not None and not same(self.beta, self._scalar_beta):
            self._scalar_beta = float(self.beta)
        if self._scalar_threshold is not None and not same(self.threshold, self._scalar_threshold):
            self._scalar_threshold = float(self.threshold)

    @property
    def params(self) -> LIFParameters:
        """The current parameters as an immutable record for the functional core."""
        beta = self._scalar_beta if self._scalar_beta is not None else self.beta
        th = self._scalar_threshold if self._scalar_threshold is not None else self.threshold
        return LIFParameters(beta=beta, threshold=th, reset=self.reset, reset_delay=self.reset_delay,
                             detach_reset=self.detach_reset, v_leak=self.v_leak, v_reset=self.v_reset,
                             input_scale=self.input_scale, surrogate=self.surrogate)

    def extra_repr(self) -> str:
        return f"beta={self.beta.tolist() if self.beta.dim() == 0 else tuple(self.beta.shape)}, " \
               f"reset={self.reset!r}, reset_delay={self.reset_delay}, surrogate={self.surrogate}"

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None, *, v0: torch.Tensor | None = None,
                return_membrane: bool = False, time_dim: int = 0):
        """Two calls, with the same numerics (the sequence is the loop of the step):

        * sequence: ``lif(x)`` with currents x (T, B, ...) (time on ``time_dim``) -> spikes of x's
          shape [and membranes with ``return_membrane=True``]; ``v0`` (B, ...) is the initial
          membrane (default: ``v_leak``).
        * single step, as in snnTorch: ``spk, mem = lif(x_t, mem)`` with x_t (B, ...) and the
          membrane ``mem`` of the same shape (start from :meth:`init_state`); returns the spikes
          and the new membrane state (B, ...).

        The sequence call runs the fused kernel (:func:`mesu_snn.kernels.lif_sequence_fused`)
        when it supports the parameters and :func:`mesu_snn.kernels.fast_paths` is on, else the
        reference loop."""
        if not torch.is_floating_point(x):
            raise ValueError(f"LIF expects floating-point currents, got dtype {x.dtype}")
        if mem is not None:
            if not isinstance(mem, torch.Tensor) or mem.shape != x.shape:
                got = tuple(mem.shape) if isinstance(mem, torch.Tensor) else type(mem).__name__
                raise ValueError(f"LIF single step lif(x_t, mem): mem must have x_t's shape {tuple(x.shape)}, got "
                                 f"{got} (for a whole sequence call lif(x) with x of shape (T, B, ...))")
            return lif_step(x, mem, self.params)
        if x.dim() < 2:
            raise ValueError(f"LIF expects input currents of shape (T, B, ...), got {tuple(x.shape)}; for one step "
                             "call lif(x_t, mem) with mem = lif.init_state(x_t)")
        return self._run(x, self.params, v0, return_membrane, time_dim)

    def init_state(self, x_t: torch.Tensor) -> torch.Tensor:
        """The resting membrane (``v_leak``) for one step's input x_t (B, ...)."""
        return initial_membrane(x_t, self.params)

    @staticmethod
    def _run(x, p, v0, return_membrane, time_dim):
        if fast_paths_enabled() and supports(p):
            return lif_sequence_fused(x, p, v0=v0, return_membrane=return_membrane, time_dim=time_dim)
        out = lif_sequence(x.movedim(time_dim, 0), p, v0=v0, return_membrane=return_membrane)
        if return_membrane:
            return out[0].movedim(0, time_dim), out[1].movedim(0, time_dim)
        return out.movedim(0, time_dim)

    def leaky_integrate(self, x: torch.Tensor, time_dim: int = 0) -> torch.Tensor:
        """Membrane of this population with its reset switched off (a non-spiking leaky
        integrator, the usual readout): currents -> membranes, same shape."""
        return self._run(x, self.params.with_(reset="none"), None, True, time_dim)[1]

    def step(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: x (B, ...), v (B, ...) -> (spikes, membrane)."""
        return lif_step(x, v, self.params)
