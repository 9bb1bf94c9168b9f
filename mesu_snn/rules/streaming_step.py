"""A whole training step without an autograd graph: forward, hand-written backward, optimizer step.

At batch 1 a step of a small network is mostly bookkeeping: building the autograd graph, running
the engine, dispatching a few hundred small ops. :class:`StreamingStep` runs the same step of a
:class:`~mesu_snn.SpikingMLP` or :class:`~mesu_snn.BayesMLP` trained by MESU or BGD as a straight
sequence of kernel calls: the forward functions of the fast paths (:mod:`mesu_snn.kernels`:
``local_linear_forward``, ``lif_forward``, the Gaussian weights ``μ + σ·ε``), then their backward
functions in reverse order (``local_linear_backward``, ``lif_backward``, ``sampled_linear_backward``,
``gaussian_weight_backward``: the very functions the autograd nodes call, so the maths has one
home), the gradients written into every μ.grad and σ.grad, and the optimizer's own ``step``: its
checks (a non-finite gradient, a step that would make a μ non-finite or a σ ≤ 0) apply unchanged,
it raises or skips as configured.

Same draws, same numbers: the noise comes from ``generator`` in the order the modules draw it, so
with equal seeds the loss, the gradients and the new μ, σ equal the autograd path's
(``loss.backward(); optimizer.step()``) to floating-point rounding (tests/test_rules_streaming_step.py).

Scope (:func:`unsupported_reason` says why a configuration is not covered; the trainer then runs
the autograd step, never something different): a ``SpikingMLP`` (any readout, bias or not, input
layer estimator "weights" or "local", LIF parameters the fused kernel supports, not learnable) or a
``BayesMLP`` (any activation), every layer in sample mode outside :func:`~mesu_snn.sampled_weights`,
every μ and σ trainable and nothing else, no module or parameter hooks; a :class:`~mesu_snn.MESU` or
:class:`~mesu_snn.BGD` optimizer over exactly those pairs; the NLL loss summed (or averaged) over the
batch; CPU tensors, any batch size; the fast paths on (``with fast_paths(whole_step=False):``
switches this step off and leaves the other fast paths on).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.optim.optimizer as _optim

from ..kernels import native
from ..kernels.gaussian_weight import gaussian_weight_backward
from ..kernels.lif_fused import lif_backward, lif_config, lif_forward, supports
from ..kernels.local_linear import local_linear_backward, local_linear_forward
from ..kernels.spike_linear import sampled_linear_backward
from ..kernels.switch import fast_paths_enabled, native_enabled, whole_step_enabled
from ..models import ACTIVATIONS, BayesMLP, SpikingMLP
from ..synapses import BayesLinear
from .bayes_optimizer import BayesianOptimizer
from .bgd import BGD
from .mesu import MESU, _check_batch
from .rule import Rule

__all__ = ["StreamingStep", "unsupported_reason", "whole_step_for"]

_ACT_BACKWARD = {
    "relu": lambda g, y: torch.ops.aten.threshold_backward(g, y, 0),
    "tanh": lambda g, y: torch.ops.aten.tanh_backward(g, y),
    "sigmoid": lambda g, y: torch.ops.aten.sigmoid_backward(g, y),
}


def _global_hooks() -> int:
    from torch.nn.modules import module as _m
    return sum(len(getattr(_m, name, None) or ()) for name in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                                "_global_backward_hooks", "_global_backward_pre_hooks"))


def _has_hooks(net: torch.nn.Module) -> bool:
    if _global_hooks():
        return True
    for mod in net.modules():
        if mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks or \
                getattr(mod, "_backward_pre_hooks", None):
            return True
    return any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None) for p in net.parameters())


def _lif_key(lif) -> tuple:
    """Everything a LIF's ``params`` is made of (its kernel configuration changes only with these)."""
    d, buf = lif.__dict__, lif._buffers
    return (d["_scalar_beta"], d["_scalar_threshold"], id(buf.get("beta")), id(buf.get("threshold")), d["reset"],
            d["reset_delay"], d["detach_reset"], id(d["surrogate"]), d["surrogate"], d["v_leak"], d["v_reset"],
            d["input_scale"])


def _model_reason(net) -> str | None:
    if type(net) not in (SpikingMLP, BayesMLP):
        return f"model {type(net).__name__} (only SpikingMLP and BayesMLP)"
    for layer in net.layers:
        if type(layer) is not BayesLinear:
            return f"layer {type(layer).__name__}"
        if layer.mode != "sample":
            return "a layer in mean mode"
        if layer._frozen is not None:
            return "inside sampled_weights()"
    if type(net) is SpikingMLP:
        for lif in net.neurons:
            if any(True for _ in lif.parameters()):
                return "learnable LIF parameters"
            if not supports(lif.params):
                return "LIF parameters the fused kernel does not support"
    elif net.activation not in _ACT_BACKWARD:
        return f"activation {net.activation!r}"
    pairs = [p for layer in net.layers for _, mu, s in layer.bayesian_pairs() for p in (mu, s)]
    if any(not p.requires_grad for p in pairs):
        return "a frozen μ or σ"
    if len({id(p) for p in net.parameters() if p.requires_grad}) != len(pairs):
        return "trainable parameters other than the μ and σ"
    if _has_hooks(net):
        return "module or parameter hooks"
    return None


def unsupported_reason(net: torch.nn.Module, optimizer=None, x: torch.Tensor | None = None,
                       samples: int | None = None, check_switch: bool = True) -> str | None:
    """None if :class:`StreamingStep` runs this model (with this optimizer, on this input) exactly as
    the autograd step would, else why not (a short phrase). ``check_switch=False``: regardless of
    :func:`~mesu_snn.kernels.fast_paths`."""
    if check_switch and not whole_step_enabled():
        return "switched off (fast_paths)"
    reason = _model_reason(net)
    if reason is not None:
        return reason
    if optimizer is not None:
        if not isinstance(optimizer, BayesianOptimizer):
            return f"optimizer {type(optimizer).__name__} (only MESU and BGD)"
        if any(g["kind"] != "bayes" for g in optimizer.param_groups):
            return "an optimizer with plain parameter groups"
        mine = {id(p) for p in net.parameters()}
        theirs = [p for g in optimizer.param_groups for p in g["params"]]
        if {id(p) for p in theirs} != mine or len(theirs) != len(mine):
            return "the optimizer does not hold exactly the model's μ and σ"
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        return "samples is not a positive int"
    if x is not None:
        mu = net.layers[0].weight_mu
        if x.device.type != "cpu" or mu.device.type != "cpu":
            return "not on the CPU"
        if x.dtype != mu.dtype or x.requires_grad:
            return "an input of another dtype than the weights, or one that requires grad"
        want = 3 if type(net) is SpikingMLP else 2
        if x.dim() != want or x.shape[-1] != net.sizes[0] or x.numel() == 0:
            return "an input of another shape than the model expects"
    return None


class StreamingStep:
    """``step = StreamingStep(net, optimizer, samples=M)``; then ``loss = step(x, y)`` per batch:
    forward with M weight samples, backward, and ``optimizer.step()`` (MESU: ``step(batch_size=B)``),
    like ``optimizer.zero_grad(); nll_loss(net(x, samples=M), y).backward(); optimizer.step()``.

    ``forward_backward(x, y, generator)`` -> (loss, logits (M, B, C)) only writes the gradients
    (``μ.grad``, ``σ.grad``; the previous ones are replaced, not accumulated: a gradient tensor this
    step wrote is overwritten in place by the next call, as long as it is still the ``.grad``).
    reduction: ``"sum"`` (MESU, BGD) or ``"mean"`` over the batch. Raises ValueError naming the reason
    if the model or optimizer is not covered (see :func:`unsupported_reason`; the trainer checks
    first and falls back to the autograd step)."""

    def __init__(self, net: torch.nn.Module, optimizer, samples: int, reduction: str = "sum"):
        reason = unsupported_reason(net, optimizer, samples=samples, check_switch=False)
        if reason is None and optimizer is None:
            reason = "no optimizer"
        if reason is not None:
            raise ValueError(f"StreamingStep does not cover this configuration: {reason}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.net, self.optimizer, self.samples, self.reduction = net, optimizer, samples, reduction
        self.spiking = type(net) is SpikingMLP
        self._collect()
        self._checked = None
        self._bufs: dict = {}                          # id(parameter) -> the gradient tensor written last

    def supported(self, x: torch.Tensor) -> str | None:
        """None if this step covers a call on x now (the model may have changed since), else why not.
        The full check (:func:`unsupported_reason`) runs again only when something it looks at could
        have changed: the switch, a layer's mode or frozen draws, a parameter's requires_grad, the
        model's parameters or hooks, the input's device, dtype or shape."""
        if not whole_step_enabled():
            return "switched off (fast_paths)"
        if self._key(x) != self._checked:
            reason = unsupported_reason(self.net, self.optimizer, x, self.samples)
            if reason is not None:
                return reason
            self._collect()                            # the model's parts may be new objects
            self._checked = self._key(x)
        if self.spiking:
            lif_key = tuple([_lif_key(n) for n in self._neurons])
            if lif_key != self._lif_key:
                params = [n.params for n in self._neurons]
                if not all(supports(p) for p in params):
                    return "LIF parameters the fused kernel does not support"
                self._configs = [lif_config(p) for p in params]
                self._readout_config = lif_config(params[-1].with_(reset="none"))
                self._lif_key = lif_key
        return None

    def _collect(self):
        net = self.net
        self._params = list(net.parameters())
        self._modules = list(net.modules())
        self._layers = list(net.layers)
        self._neurons = list(net.neurons) if self.spiking else []
        # per layer: the layer and its (μ, σ) of the weights and of the bias (None without), read once here
        # instead of through Module.__getattr__ at every call (a replaced parameter changes _key)
        self._plan = [(l, l.weight_mu, l.weight_sigma, l.bias_mu, l.bias_sigma) for l in self._layers]
        self._lif_key = None

    def _key(self, x):
        """What :func:`unsupported_reason` looked at, in a cheap comparable form."""
        return (x.device, x.dtype, x.shape, x.requires_grad, _global_hooks(),
                tuple([(l.mode, l._frozen is None) for l in self._layers]),
                tuple([(p.requires_grad, not p._backward_hooks) for p in self._params]),
                tuple([(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks),
                        *map(id, m._parameters.values()), *map(id, m._modules.values())) for m in self._modules]),
                tuple([len(g["params"]) for g in self.optimizer.param_groups]))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.step(x, y, generator)

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Forward, backward and the optimizer's step; returns the loss (0-dim tensor)."""
        loss, _ = self.forward_backward(x, y, generator)
        self.optimizer_step(int(y.shape[0]))
        return loss

    def optimizer_step(self, batch_size: int) -> None:
        """``optimizer.step(batch_size=B)`` (MESU) or ``optimizer.step()`` (BGD), with the same result,
        refusal or skip and counters, without torch.optim's wrapper where nothing can observe it: the
        optimizer is exactly a MESU or BGD whose ``step`` is not replaced on the instance (e.g. by an LR
        scheduler), no optimizer step hook is registered (its own or global) and the autograd profiler
        is off. A MESU step then runs its compiled step directly (``_native_step``: the cached guard and
        update); whatever that declines (a non-finite gradient or result, no compiled loops, another
        layout) goes to the full ``step``, which checks again, names the tensor and raises or skips."""
        opt = self.optimizer
        cls = type(opt)
        if (cls is MESU or cls is BGD) and "step" not in opt.__dict__ and not opt._optimizer_step_pre_hooks \
                and not opt._optimizer_step_post_hooks and not _optim._global_optimizer_pre_hooks \
                and not _optim._global_optimizer_post_hooks and not torch.autograd._profiler_enabled():
            if cls is MESU:
                _check_batch(batch_size)
                if fast_paths_enabled() and native_enabled():
                    opt._step_batch = batch_size
                    try:
                        done = opt._native_step()
                    finally:
                        opt._step_batch = None
                    if done:
                        return
            unwrapped = getattr(cls.step, "__wrapped__", None)
            if unwrapped is not None:
                unwrapped(opt, batch_size=batch_size) if cls is MESU else unwrapped(opt)
                return
        if isinstance(opt, MESU):
            opt.step(batch_size=batch_size)
        else:
            opt.step()

    @torch.no_grad()
    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None, *,
                         checked: bool = False):
        """The loss and the (M, B, C) logits; every μ.grad and σ.grad set to this batch's gradient.
        ``checked=True``: the caller has just had :meth:`supported` return None for this x."""
        reason = None if checked else self.supported(x)
        if reason is not None:
            raise ValueError(f"StreamingStep does not cover this call: {reason}")
        if y.dim() != 1 or y.shape[0] != x.shape[-2] or y.dtype not in (torch.int64, torch.int32, torch.uint8,
                                                                        torch.int16):
            raise ValueError(f"expected integer class targets of shape (B={x.shape[-2]},), got "
                             f"{tuple(y.shape)} {y.dtype}")
        net, m = self.net, self.samples
        plan = self._plan
        n_layers = len(plan)
        first, f_wmu, f_wsig, f_bmu, f_bsig = plan[0]
        # ---- forward: the same kernels and the same draws, in the same order, as net(x, samples=M)
        if first.estimator == "local":
            h, st0 = local_linear_forward(x, f_wmu, f_wsig, f_bmu, f_bsig, samples=m, generator=generator)
        else:
            eps0 = first.draw_noise(m, generator)
            w0, b0 = _weights(f_wmu, f_wsig, f_bmu, f_bsig, eps0)
            h = first._apply_shared(x, w0, b0)
            st0 = (eps0, w0)
        if self.spiking:
            configs = self._configs
            h = h.contiguous()
        cache = []                                     # per hidden layer: (its input, eps, w)
        for i in range(1, n_layers):
            layer, wmu, wsig, bmu, bsig = plan[i]
            if self.spiking:
                s, u = lif_forward(h, configs[i - 1], None, time_dim=1)
                inp, state = s, u
            else:
                inp = state = ACTIVATIONS[net.activation](h)
            eps = layer.draw_noise(m, generator)
            w, b = _weights(wmu, wsig, bmu, bsig, eps)
            lead = inp.shape[1:-1]
            xf = inp.reshape(m, -1, layer.in_features)
            wt = w.transpose(1, 2)
            h = (torch.baddbmm(b.unsqueeze(1), xf, wt) if b is not None else torch.bmm(xf, wt))
            h = h.reshape(m, *lead, layer.out_features)
            cache.append((inp, state, eps, w))
        if self.spiking:
            if net.readout == "count":
                c_out = configs[-1]
                s, u_out = lif_forward(h, c_out, None, time_dim=1)
                out = s.sum(1)
            else:
                c_out = self._readout_config
                _, u_out = lif_forward(h, c_out, None, time_dim=1)
                out = u_out.mean(1)
        else:
            out = h
        # ---- the loss: mean over samples of log softmax, NLL summed (or averaged) over the batch
        loss, g = _mc_nll(out, y, self.reduction)                                 # g: ∂C/∂logits (M, B, C)
        # ---- backward
        if self.spiking:
            t = h.shape[1]
            if net.readout == "count":
                g_h = lif_backward(u_out, None, g.unsqueeze(1).expand(h.shape), None, c_out, 1)[0]
            else:
                g_h = lif_backward(u_out, None, torch.zeros_like(u_out), (g / t).unsqueeze(1).expand(h.shape),
                                   c_out, 1)[0]
        else:
            g_h = g
        grads = []
        for i in range(n_layers - 1, 0, -1):
            layer, wmu, wsig, bmu, bsig = plan[i]
            inp, state, eps, w = cache[i - 1]
            gf = g_h.reshape(m, -1, layer.out_features)
            g_in, g_w, g_b = sampled_linear_backward(gf, inp.reshape(m, -1, layer.in_features), w,
                                                     need_b=bmu is not None)
            grads.append((plan[i], gaussian_weight_backward(g_w, eps[0], out=self._out(wmu, wsig)),
                          None if g_b is None else gaussian_weight_backward(g_b, eps[1], out=self._out(bmu, bsig))))
            g_in = g_in.reshape(inp.shape)
            if self.spiking:
                g_h = lif_backward(state, None, g_in, None, configs[i - 1], 1)[0]
            else:
                g_h = _ACT_BACKWARD[net.activation](g_in, state)
        if first.estimator == "local":
            g_wmu, g_wsig, g_bmu, g_bsig = local_linear_backward(st0, g_h, out=self._out(f_wmu, f_wsig))
            grads.append((plan[0], (g_wmu, g_wsig), None if g_bmu is None else (g_bmu, g_bsig)))
        else:
            eps0, w0 = st0
            grads.append((plan[0], *_shared_backward(plan[0], x, g_h, eps0, w0, self._out)))
        bufs = self._bufs
        for entry, gw, gb in grads:
            for p, gp in zip(entry[1:], (*gw, *(gb or (None, None)))):
                if gp is not None:
                    if p.grad is not gp:
                        p.grad = gp
                    bufs[id(p)] = gp
        return loss, out

    def _out(self, a, b):
        """The gradient tensors this step wrote into the pair (a, b) last time, to be overwritten, if
        they are still the pair's ``.grad`` (else None: new tensors are made)."""
        ga, gb = a.grad, b.grad
        bufs = self._bufs
        if ga is not None and gb is not None and bufs.get(id(a)) is ga and bufs.get(id(b)) is gb:
            return ga, gb
        return None


def _mc_nll(out: torch.Tensor, y: torch.Tensor, reduction: str):
    """The loss ``nll_loss(log_softmax(out).mean(0), y, "sum")`` (``/ B`` for ``reduction="mean"``) of the
    (M, B, C) logits and its gradient with respect to them: one compiled pass
    (:mod:`mesu_snn.kernels.native` ``mc_nll``, the same formulas row by row) where the loops are
    available, else the torch ops (a target out of range raises there, as in the autograd path)."""
    m, bsz, c = out.shape
    scale = 1.0 if reduction == "sum" else 1.0 / bsz
    yl = y.long()
    sfx = native.suffix(out) if native_enabled() else None
    lib = native.library() if sfx is not None else None
    if lib is not None:
        o = out.contiguous()
        yc = yl.contiguous()
        g = torch.empty_like(o)
        loss = o.new_empty(())
        if getattr(lib, f"mc_nll_{sfx}")(o.data_ptr(), yc.data_ptr(), g.data_ptr(), loss.data_ptr(), m, bsz, c, scale):
            return (loss / bsz if reduction == "mean" else loss), g
    lsm = torch.log_softmax(out, -1)
    loss = F.nll_loss(lsm.mean(0), yl, reduction="sum")
    if reduction == "mean":
        loss = loss / bsz
    g = torch.zeros_like(lsm)
    g[:, torch.arange(bsz), yl] = -scale / m
    return loss, torch.ops.aten._log_softmax_backward_data(g, lsm, -1, lsm.dtype)


def _weights(wmu, wsig, bmu, bsig, eps):
    """w = μ + σ·ε (and the bias), the values of :meth:`BayesianLayer.sample_weights`."""
    ew, eb = eps
    w = torch.addcmul(wmu, wsig, ew)
    b = None if eb is None else torch.addcmul(bmu, bsig, eb)
    return w, b


def _shared_backward(entry, x, g, eps, w, out_for):
    """Gradients of the input layer with drawn weights (:meth:`BayesLinear._apply_shared`):
    y (M, P, out) = x (P, in) @ w[m]ᵀ + b[m]; entry: (layer, μ, σ, μ_b, σ_b)."""
    _, wmu, wsig, bmu, bsig = entry
    m, out, inp = w.shape
    gf = g.reshape(m, -1, out)                                           # (M, P, out)
    g_w = (gf.transpose(1, 2).reshape(m * out, -1) @ x.reshape(-1, inp)).view(m, out, inp)
    gw = gaussian_weight_backward(g_w, eps[0], out=out_for(wmu, wsig))
    gb = None if bmu is None else gaussian_weight_backward(gf.sum(1), eps[1], out=out_for(bmu, bsig))
    return gw, gb


def rule_reason(rule) -> str | None:
    """None if the trainer may replace ``rule``'s forward, loss and backward by :class:`StreamingStep`
    (a Bayesian, non-online rule whose loss is the plain NLL: MESU, BGD), else why not."""
    if not isinstance(rule, Rule) or not rule.bayesian or rule.online:
        return "not a Bayesian backward-pass rule"
    cls = type(rule)
    if cls.loss is not Rule.loss or cls.data_loss is not Rule.data_loss or cls.penalty is not Rule.penalty or \
            cls.zero_grad is not Rule.zero_grad:
        return f"rule {rule.name!r} changes the loss"
    return None


def whole_step_for(rule, samples: int):
    """The :class:`StreamingStep` the trainer uses for ``rule`` (its model and optimizer) with
    ``samples`` Monte-Carlo samples, or False if the rule or model is not covered (the per-batch
    :meth:`StreamingStep.supported` check still applies)."""
    if rule_reason(rule) is not None or \
            unsupported_reason(rule.model, rule.optimizer, samples=samples, check_switch=False) is not None:
        return False
    return StreamingStep(rule.model, rule.optimizer, samples, reduction=rule.reduction)
