"""Bayesian synapses: layers whose every weight is a Gaussian N(μ, σ²), w = μ + σ·ε.

Shapes. ``M`` is the number of Monte-Carlo weight samples, ``P`` any leading dims
(time, batch, ...). A layer called with ``samples=M`` draws M weight tensors (one per
sample, shared by every leading index, so by the whole batch and every time step of a
sequence) and returns ``(M, *P, out)``. Its input is either shared by all samples,
``(*P, in)``, or already per sample, ``(M, *P, in)`` with ``sampled_input=True``. All M
samples run in one batched matmul / grouped convolution.

Modes: ``"sample"`` (w = μ + σε) and ``"mean"`` (w = μ; with ``samples`` given the
output's sample dim has size 1). Without ``samples``, inside :func:`sampled_weights` a layer
uses frozen noise and the *folded* layout ``(M·B, ...)`` (sample-major), so any torch model,
e.g. an snnTorch network that calls its layers once per time step, keeps one draw per sample
over a sequence. Outside that context a layer never silently redraws its weights between
calls: in mean mode or after ``eval()`` it computes with w = μ; in training and sample mode
it raises an error saying what to do.

Initialisation: μ ~ U(−c/√fan_in, c/√fan_in) with c = ``mu_init``; σ = s/√fan_in with
s = ``sigma_init``. The layers' default is c = 1, s = 0.5 (``INITS["library"]``), *not* the
authors': their code (kellian-cottart/mesu-pmnist, customLayers/linears/bayesianLinear.py)
draws μ ~ U(±4/√fan_in) and σ = 2/√fan_in (``INITS["authors"]``, c = 4, s = 2; their MLPs
have no bias). σ₀² is MESU's learning rate, so the authors' init learns 16× faster per
sample. :class:`mesu_snn.BayesMLP` defaults to ``"authors"`` (the paper's ANN protocol);
the spiking models keep ``"library"`` (see their docstrings for the evidence).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bounds import check_number
from .kernels.gaussian_weight import gaussian_weight
from .kernels.spike_linear import spike_linear
from .kernels.switch import fast_paths_enabled
from .kernels.local_linear import local_linear
from .kernels.noise import standard_normal

__all__ = ["BayesianLayer", "BayesLinear", "BayesConv2d", "sampled_weights", "bayesian_pairs",
           "set_mode", "mode_set", "fold_samples", "unfold_samples", "INITS", "resolve_init"]

MODES = ("sample", "mean")
#: BayesLinear's ways of sampling a shared-input layer: draw weights, or draw pre-activations
ESTIMATORS = ("weights", "local")

#: Named initialisations, name -> (mu_init c, sigma_init s): μ ~ U(±c/√fan_in), σ = s/√fan_in.
INITS = {"authors": (4.0, 2.0), "library": (1.0, 0.5)}


def resolve_init(init: str | None, mu_init: float, sigma_init: float) -> tuple[float, float]:
    """(mu_init, sigma_init) of the named ``init`` (see :data:`INITS`), or the given numbers if None."""
    if init is None:
        return mu_init, sigma_init
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))} or None, got {init!r}")
    return INITS[init]


class BayesianLayer(nn.Module):
    """Base of layers holding ``weight_mu``/``weight_sigma`` (and ``bias_mu``/``bias_sigma``)."""

    weight_mu: nn.Parameter
    weight_sigma: nn.Parameter

    def _init_bayes(self, weight_shape, out_features, fan_in, bias, mu_init, sigma_init):
        check_number("sigma_init", sigma_init, ">0", "σ = sigma_init/√fan_in")
        check_number("mu_init", mu_init, ">=0", "μ ~ U(±mu_init/√fan_in)")
        self.mode = "sample"
        self._frozen: tuple | None = None
        bound, sig = mu_init / math.sqrt(fan_in), sigma_init / math.sqrt(fan_in)
        self.weight_mu = nn.Parameter(torch.empty(weight_shape).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full(weight_shape, sig))
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
            self.bias_sigma = nn.Parameter(torch.full((out_features,), sig))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_sigma", None)

    def bayesian_pairs(self) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
        """(name, μ, σ) for each Gaussian parameter tensor of this layer."""
        pairs = [("weight", self.weight_mu, self.weight_sigma)]
        if self.bias_mu is not None:
            pairs.append(("bias", self.bias_mu, self.bias_sigma))
        return pairs

    def draw_noise(self, samples: int, generator: torch.Generator | None = None):
        """Standard normal ε for ``samples`` weight draws: (M, *weight.shape), (M, out) or None."""
        mu = self.weight_mu
        ew = standard_normal((samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        eb = None
        if self.bias_mu is not None:
            eb = standard_normal((samples, *self.bias_mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        return ew, eb

    def sample_weights(self, samples: int, generator: torch.Generator | None = None, noise=None):
        """M weight draws: w (M, *weight.shape), b (M, out) or None. Mean mode: M = 1, w = μ."""
        if self.mode == "mean":
            b = None if self.bias_mu is None else self.bias_mu.unsqueeze(0)
            return self.weight_mu.unsqueeze(0), b
        ew, eb = self.draw_noise(samples, generator) if noise is None else noise
        if fast_paths_enabled() and not torch.compiler.is_compiling():
            # the same draws, w = μ + σε as one autograd node that saves only ε
            # (:func:`mesu_snn.kernels.gaussian_weight`; checked equal in tests/test_kernels.py)
            w = gaussian_weight(self.weight_mu, self.weight_sigma, ew)
            b = None if self.bias_mu is None else gaussian_weight(self.bias_mu, self.bias_sigma, eb)
            return w, b
        w = self.weight_mu + self.weight_sigma * ew
        b = None if self.bias_mu is None else self.bias_mu + self.bias_sigma * eb
        return w, b

    # -- to be provided by subclasses -------------------------------------------------
    def _check_input(self, x: torch.Tensor, sampled_input: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _apply_shared(self, x, w, b):  # x (*P, ...) -> (M, *P, ...)
        raise NotImplementedError

    def _apply_sampled(self, x, w, b, binary=False):  # x (M, *P, ...) -> (M, *P, ...); binary: 0/1 input
        raise NotImplementedError

    def forward(self, x: torch.Tensor, samples: int | None = None, sampled_input: bool = False,
                generator: torch.Generator | None = None, spikes: bool = False) -> torch.Tensor:
        """x (*P, in...) shared by all samples, or (M, *P, in...) with ``sampled_input`` ->
        (M, *P, out...) with ``samples=M`` (see the module docstring for the other layouts).
        ``spikes=True`` promises a binary (0/1) input, which lets a layer keep it as ``bool``
        for backward (:func:`mesu_snn.kernels.spike_linear`)."""
        if not torch.is_floating_point(x):
            raise ValueError(f"{type(self).__name__} expects a floating-point input, got dtype {x.dtype}")
        self._check_input(x, sampled_input)
        if samples is not None and (not isinstance(samples, int) or samples < 1):
            raise ValueError(f"samples must be a positive int, got {samples!r}")
        if sampled_input:
            m = x.shape[0]
            if samples is not None and samples != m:
                raise ValueError(f"sampled_input=True: expected input of shape (M={samples}, ...), got {tuple(x.shape)}")
            if self.mode == "mean":
                w, b = self.sample_weights(1)
                return self._apply_sampled(x, w.expand(m, *w.shape[1:]), None if b is None else b.expand(m, -1), spikes)
            noise = self._frozen[1] if (self._frozen is not None and self._frozen[0] == m) else None
            w, b = self.sample_weights(m, generator, noise)
            return self._apply_sampled(x, w, b, spikes)
        if samples is not None:
            noise = self._frozen[1] if (self._frozen is not None and self._frozen[0] == samples) else None
            w, b = self.sample_weights(samples, generator, noise)
            return self._apply_shared(x, w, b)
        if self.mode == "mean":
            w, b = self.sample_weights(1)
            return self._apply_shared(x, w, b)[0]
        if self._frozen is not None:  # folded (M*B, ...) layout inside sampled_weights()
            m = self._frozen[0]
            if x.shape[0] % m:
                raise ValueError(f"inside sampled_weights(samples={m}) the input's first dim must be "
                                 f"M·B (a multiple of {m}), got shape {tuple(x.shape)}")
            w, b = self.sample_weights(m, None, self._frozen[1])
            y = self._apply_sampled(x.reshape(m, x.shape[0] // m, *x.shape[1:]), w, b)
            return y.reshape(x.shape[0], *y.shape[2:])
        if not self.training:       # eval(), no sampling asked for: the mean network, deterministic
            w, b = self.sample_weights(1) if self.mode == "mean" else self._mean_weights()
            return self._apply_shared(x, w, b)[0]
        raise RuntimeError(
            f"{type(self).__name__} called without samples= outside mesu_snn.sampled_weights(): it would draw "
            "new weights at every call, i.e. at every time step of a loop over time, which is not the model MESU "
            "trains (one draw per sequence). Wrap the whole sequence in `with ms.sampled_weights(model, samples=M):` "
            "(batch folded as (M·B, ...)), call the layer with samples=M, or use the mean network "
            "(ms.set_mode(model, 'mean'), or model.eval())")

    def _mean_weights(self):
        b = None if self.bias_mu is None else self.bias_mu.unsqueeze(0)
        return self.weight_mu.unsqueeze(0), b


class BayesLinear(BayesianLayer):
    """Bayesian fully connected layer. x (*P, in) -> (M, *P, out) with ``samples=M``.

    Parameters ``weight_mu``/``weight_sigma`` (out, in) and ``bias_mu``/``bias_sigma`` (out,).

    ``estimator``: ``"weights"`` (default) draws M weight tensors, each shared by every leading
    index. ``"local"`` applies to calls with ``samples=M`` on a shared input (*S, B, in) in sample
    mode, outside :func:`sampled_weights`: it samples the pre-activations from their exact Gaussian
    law given the input, jointly over the steps S, independently per (sample, batch element,
    neuron) (:func:`mesu_snn.kernels.local_linear`): the same law for every example, independent
    across the batch instead of correlated, unbiased gradients of μ and σ; the input must not
    require grad. Every other call uses the weights. Cost: "local" needs M·T normals and a T × T
    factorisation per (example, neuron) and ~B·T²/2·in·out multiply-adds each way, "weights" M·in·out
    normals and ~M·T·B·in·out: "local" is for small batches (batch 1, T = 10, M = 10: the SpikingMLP step
    1.6-2.3× faster) and loses at large ones (batch 32, M = 4: 3× slower), see benchmarks/README.md.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 mu_init: float = 1.0, sigma_init: float = 0.5, estimator: str = "weights"):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        self.in_features, self.out_features, self.estimator = in_features, out_features, estimator
        self._init_bayes((out_features, in_features), out_features, in_features, bias, mu_init, sigma_init)

    def extra_repr(self) -> str:
        est = "" if self.estimator == "weights" else f", estimator={self.estimator!r}"
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias_mu is not None}, mode={self.mode!r}{est}"

    def forward(self, x: torch.Tensor, samples: int | None = None, sampled_input: bool = False,
                generator: torch.Generator | None = None, spikes: bool = False) -> torch.Tensor:
        if (self.estimator == "local" and samples is not None and not sampled_input and self.mode == "sample"
                and self._frozen is None):
            return local_linear(x, self.weight_mu, self.weight_sigma, self.bias_mu, self.bias_sigma,
                                samples=samples, generator=generator)
        return super().forward(x, samples=samples, sampled_input=sampled_input, generator=generator, spikes=spikes)

    def _check_input(self, x, sampled_input):
        need = 2 if sampled_input else 1
        if x.dim() < need or x.shape[-1] != self.in_features:
            lead = "(M, ..., " if sampled_input else "(..., "
            raise ValueError(f"BayesLinear expects input of shape {lead}in_features={self.in_features}), "
                             f"got {tuple(x.shape)}")

    def _apply_shared(self, x, w, b):
        m, out, inp = w.shape
        lead = x.shape[:-1]
        y = x.reshape(-1, inp) @ w.reshape(m * out, inp).t()          # (P, M*out): one matmul
        y = y.view(-1, m, out).transpose(0, 1)                          # (M, P, out)
        if b is not None:
            y = y + b.unsqueeze(1)
        return y.reshape(m, *lead, out)

    def _apply_sampled(self, x, w, b, binary=False):
        m = w.shape[0]
        lead = x.shape[1:-1]
        xf = x.reshape(m, -1, self.in_features)
        if binary and fast_paths_enabled() and not torch.compiler.is_compiling():
            return spike_linear(xf, w, b).reshape(m, *lead, w.shape[1])
        y = torch.baddbmm(b.unsqueeze(1), xf, w.transpose(1, 2)) if b is not None else torch.bmm(xf, w.transpose(1, 2))
        return y.reshape(m, *lead, w.shape[1])


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class BayesConv2d(BayesianLayer):
    """Bayesian 2-d convolution. x (*P, C, H, W) -> (M, *P, out, H', W') with ``samples=M``.

    Parameters ``weight_mu``/``weight_sigma`` (out, C/groups, kh, kw); all samples run as one
    grouped convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, mu_init: float = 1.0, sigma_init: float = 0.5):
        super().__init__()
        if in_channels < 1 or out_channels < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must be >= 1 "
                             f"and divisible by groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation, self.groups = _pair(dilation), groups
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        fan_in = (in_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        self._init_bayes(shape, out_channels, fan_in, bias, mu_init, sigma_init)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, mode={self.mode!r}")

    def _check_input(self, x, sampled_input):
        need = 4 if sampled_input else 3
        if x.dim() < need or x.shape[-3] != self.in_channels:
            lead = "(M, ..., " if sampled_input else "(..., "
            raise ValueError(f"BayesConv2d expects input of shape {lead}C={self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")

    def _conv(self, x, w, b, groups):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups)

    def _apply_shared(self, x, w, b):
        m, out, g = w.shape[0], w.shape[1], self.groups
        lead = x.shape[:-3]
        # order output channels as (group, sample, channel-in-group) so one grouped conv serves all M
        wg = w.reshape(m, g, out // g, *w.shape[2:]).transpose(0, 1).reshape(g * m * (out // g), *w.shape[2:])
        bg = None if b is None else b.reshape(m, g, out // g).transpose(0, 1).reshape(-1)
        y = self._conv(x.reshape(-1, *x.shape[-3:]), wg, bg, g)              # (P, g*M*out/g, H', W')
        y = y.view(y.shape[0], g, m, out // g, *y.shape[-2:]).permute(2, 0, 1, 3, 4, 5)
        return y.reshape(m, *lead, out, *y.shape[-2:])

    def _apply_sampled(self, x, w, b, binary=False):
        m, out = w.shape[0], w.shape[1]
        lead = x.shape[1:-3]
        c, h, wd = x.shape[-3:]
        xf = x.reshape(m, -1, c, h, wd).transpose(0, 1).reshape(-1, m * c, h, wd)   # (P, M*C, H, W)
        y = self._conv(xf, w.reshape(m * out, *w.shape[2:]), None if b is None else b.reshape(-1), m * self.groups)
        y = y.view(y.shape[0], m, out, *y.shape[-2:]).transpose(0, 1)
        return y.reshape(m, *lead, out, *y.shape[-2:])


def _bayes_layers(model: nn.Module) -> Iterator[tuple[str, BayesianLayer]]:
    for name, mod in model.named_modules():
        if isinstance(mod, BayesianLayer):
            yield name, mod


def bayesian_pairs(model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """Every (qualified name, μ, σ) of the model's Bayesian layers, found by structure."""
    out = []
    for name, layer in _bayes_layers(model):
        for pname, mu, sigma in layer.bayesian_pairs():
            out.append((f"{name}.{pname}" if name else pname, mu, sigma))
    return out


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Set every Bayesian layer to ``"sample"`` (w = μ + σε) or ``"mean"`` (w = μ)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for _, layer in _bayes_layers(model):
        layer.mode = mode
    return model


@contextmanager
def mode_set(model_or_layers, mode: str):
    """Set every Bayesian layer of a model (or of an iterable of modules) to ``mode`` for the
    block and restore each layer's own previous mode afterwards, also on error."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    mods = [model_or_layers] if isinstance(model_or_layers, nn.Module) else list(model_or_layers)
    layers = list({id(l): l for m in mods for _, l in _bayes_layers(m)}.values())
    saved = [layer.mode for layer in layers]
    try:
        for layer in layers:
            layer.mode = mode
        yield model_or_layers
    finally:
        for layer, m in zip(layers, saved):
            layer.mode = m


@contextmanager
def sampled_weights(model: nn.Module, samples: int, generator: torch.Generator | None = None):
    """Freeze M weight draws in every Bayesian layer of ``model`` for the block.

    Inside, a layer called without ``samples`` expects the folded layout ``(M·B, ...)``
    (see :func:`fold_samples`) and applies draw m to rows m·B … (m+1)·B − 1; called with
    ``samples=M`` it reuses the same draws. Use it to run any torch/snnTorch/Norse model
    that calls its layers once per time step.
    """
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    layers = [layer for _, layer in _bayes_layers(model)]
    saved = [layer._frozen for layer in layers]
    try:
        for layer in layers:
            layer._frozen = (samples, layer.draw_noise(samples, generator))
        yield model
    finally:
        for layer, s in zip(layers, saved):
            layer._frozen = s


def fold_samples(x: torch.Tensor, samples: int) -> torch.Tensor:
    """Repeat a (B, ...) batch for M samples: -> (M·B, ...), sample-major."""
    return x.unsqueeze(0).expand(samples, *x.shape).reshape(samples * x.shape[0], *x.shape[1:])


def unfold_samples(y: torch.Tensor, samples: int) -> torch.Tensor:
    """(M·B, ...) -> (M, B, ...)."""
    if y.shape[0] % samples:
        raise ValueError(f"first dim {y.shape[0]} is not a multiple of samples={samples}")
    return y.reshape(samples, y.shape[0] // samples, *y.shape[1:])
