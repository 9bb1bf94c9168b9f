"""Ready-made Bayesian spiking networks, and ``bayesianize`` for any torch model."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from .functional.lif import lif_sequence
from .kernels.lif_fused import fast_paths_enabled, lif_sequence_fused, supports
from .kernels.gaussian_weight import gaussian_weight
from .kernels.spike_linear import spike_linear
from .neurons import LIF
from .synapses import BayesConv2d, BayesianLayer, BayesLinear, resolve_init, set_mode

__all__ = ["SpikingMLP", "SpikingConvNet", "BayesMLP", "bayesianize", "READOUTS", "ACTIVATIONS"]

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}

READOUTS = ("count", "membrane")


def _lif_over_time(lif: LIF, h: torch.Tensor) -> torch.Tensor:
    """h: (M, T, ...) currents -> (M, T, ...) spikes, LIF run over dim 1 (the fused kernel
    runs over dim 1 in place of the layout, so no transposed copies are made)."""
    p = lif.params
    if fast_paths_enabled() and supports(p):
        return lif_sequence_fused(h, p, time_dim=1)
    return lif(h.transpose(0, 1)).transpose(0, 1)


def _readout(lif: LIF, h: torch.Tensor, readout: str) -> torch.Tensor:
    """h: (M, T, B, C) output-layer currents -> (M, B, C) logits."""
    if readout == "count":
        return _lif_over_time(lif, h).sum(1)
    # membrane: non-spiking leaky integrator with the output layer's beta, averaged over time
    p = lif.params.with_(reset="none")
    if fast_paths_enabled() and supports(p):
        return lif_sequence_fused(h, p, return_membrane=True, time_dim=1)[1].mean(1)
    _, v = lif_sequence(h.transpose(0, 1), p, return_membrane=True, impl="reference")
    return v.mean(0)


def _spikes_into(layer: BayesLinear, s: torch.Tensor, generator) -> torch.Tensor:
    """``layer(s, sampled_input=True, generator=generator)`` for spikes s (M, ..., in); the fast
    path draws the same weights and runs :func:`mesu_snn.kernels.spike_linear` (spikes saved
    as bool for backward). Checked against the layer's own forward in tests/test_kernels.py."""
    if not (fast_paths_enabled() and type(layer) is BayesLinear) or torch.compiler.is_compiling():
        return layer(s, sampled_input=True, generator=generator)
    m = s.shape[0]
    if layer.mode == "mean":
        w, b = layer.sample_weights(1)
        w, b = w.expand(m, *w.shape[1:]), (None if b is None else b.expand(m, -1))
    else:
        w, b = _fast_sample_weights(layer, m, generator)
    y = spike_linear(s.reshape(m, -1, s.shape[-1]), w, b)
    return y.reshape(*s.shape[:-1], w.shape[1])


def _fast_sample_weights(layer: BayesLinear, m: int, generator):
    """``layer.sample_weights(m, generator, frozen noise)`` in sample mode, with each
    w = μ + σ·ε as one autograd node (:func:`mesu_snn.kernels.gaussian_weight`): the same
    draws from the same stream (``layer.draw_noise``), cheaper forward and backward."""
    frozen = layer._frozen
    ew, eb = frozen[1] if (frozen is not None and frozen[0] == m) else layer.draw_noise(m, generator)
    w = gaussian_weight(layer.weight_mu, layer.weight_sigma, ew)
    b = None if layer.bias_mu is None else gaussian_weight(layer.bias_mu, layer.bias_sigma, eb)
    return w, b


def _input_layer(layer: BayesLinear, x: torch.Tensor, samples: int, generator) -> torch.Tensor:
    """``layer(x, samples=samples, generator=generator)`` (x shared by all samples); the fast
    path samples the weights with :func:`_fast_sample_weights`."""
    if (not (fast_paths_enabled() and type(layer) is BayesLinear) or layer.mode == "mean"
            or not isinstance(samples, int) or samples < 1 or not torch.is_floating_point(x)
            or torch.compiler.is_compiling()):
        return layer(x, samples=samples, generator=generator)
    w, b = _fast_sample_weights(layer, samples, generator)
    return layer._apply_shared(x, w, b)


class SpikingMLP(nn.Module):
    """Fully connected Bayesian spiking network: BayesLinear → LIF for every layer.

    ``net(x, samples=M)``: x (T, B, sizes[0]) spikes or currents -> (M, B, sizes[-1]) logits,
    one per weight sample (M = 1 in mean mode). readout ``"count"``: output spike counts over
    the T steps (as in snnTorch's tutorials); ``"membrane"``: time-averaged membrane of a
    non-resetting output layer. beta, threshold, reset, surrogate: see :class:`~mesu_snn.LIF`.
    init: a named initialisation of :data:`mesu_snn.INITS` (``"authors"``: μ ~ U(±4/√fan_in),
    σ₀ = 2/√fan_in) overriding ``mu_init``/``sigma_init``. Default: the library's (1, 0.5). Evidence:
    at batch 1 the authors' init learns faster (LIF 784-50-10, MESU N = 1e4, 2000 standardised
    images: 0.773 vs 0.704 test accuracy, experiments/results/paper_pmnist_snn/), but at the
    trainer's default batch 16 on the summed loss its σ₀ drives σ negative in one update without
    the clamp (results/snn_clamp_check.json), and the shipped batch-16 recipes were tuned with the
    library's init; so pass ``init="authors"`` for streaming (batch 1) runs.
    """

    def __init__(self, sizes: Sequence[int], beta=0.9, threshold=1.0, reset: str = "subtract",
                 surrogate="fast_sigmoid", readout: str = "membrane", bias: bool = True,
                 mu_init: float = 1.0, sigma_init: float = 0.5, init: str | None = None):
        super().__init__()
        mu_init, sigma_init = resolve_init(init, mu_init, sigma_init)
        sizes = list(sizes)
        if len(sizes) < 2 or any((not isinstance(s, int)) or s < 1 for s in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer widths, got {sizes!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.sizes, self.readout = sizes, readout
        self.layers = nn.ModuleList(BayesLinear(a, b, bias=bias, mu_init=mu_init, sigma_init=sigma_init)
                                    for a, b in zip(sizes[:-1], sizes[1:]))
        self.neurons = nn.ModuleList(LIF(beta, threshold, reset, surrogate) for _ in sizes[1:])

    def forward(self, x: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"SpikingMLP expects input of shape (T, B, {self.sizes[0]}), got {tuple(x.shape)}")
        h = _input_layer(self.layers[0], x, samples, generator)             # (M, T, B, H)
        for i in range(1, len(self.layers)):
            s = _lif_over_time(self.neurons[i - 1], h)
            h = _spikes_into(self.layers[i], s, generator)
        return _readout(self.neurons[-1], h, self.readout)

    def mean_mode(self) -> "SpikingMLP":
        return set_mode(self, "mean")

    def sample_mode(self) -> "SpikingMLP":
        return set_mode(self, "sample")


class BayesMLP(nn.Module):
    """Non-spiking Bayesian MLP: BayesLinear → activation for every layer but the last.

    ``net(x, samples=M)``: x (B, sizes[0]) real-valued inputs (e.g. standardised pixels) ->
    (M, B, sizes[-1]) logits, one per weight sample, every sample shared by the whole batch
    (M = 1 in mean mode). Works with every rule of :func:`mesu_snn.make_rule` and with the
    trainer (config ``model.kind = "ann"``).

    init: ``"authors"`` (default: μ ~ U(±4/√fan_in), σ₀ = 2/√fan_in, the MESU authors' code and
    the paper's permuted-MNIST protocol, reproduced in experiments/paper_pmnist.py), ``"library"``
    (1, 0.5), or None to use ``mu_init``/``sigma_init``. bias: False by default (the authors' MLP).
    """

    #: the batch dimension of the input (spiking models take (T, B, ...): 1)
    batch_dim = 0

    def __init__(self, sizes: Sequence[int], activation: str = "relu", bias: bool = False,
                 init: str | None = "authors", mu_init: float = 4.0, sigma_init: float = 2.0):
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2 or any((not isinstance(s, int)) or isinstance(s, bool) or s < 1 for s in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer widths, got {sizes!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")
        mu_init, sigma_init = resolve_init(init, mu_init, sigma_init)
        self.sizes, self.activation = sizes, activation
        self.layers = nn.ModuleList(BayesLinear(a, b, bias=bias, mu_init=mu_init, sigma_init=sigma_init)
                                    for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"BayesMLP expects input of shape (B, {self.sizes[0]}), got {tuple(x.shape)}")
        act = ACTIVATIONS[self.activation]
        h = _input_layer(self.layers[0], x, samples, generator)             # (M, B, H)
        for layer in self.layers[1:]:
            h = act(h)
            if fast_paths_enabled() and type(layer) is BayesLinear and layer.mode == "sample" \
                    and not torch.compiler.is_compiling():
                w, b = _fast_sample_weights(layer, h.shape[0], generator)
                h = layer._apply_sampled(h, w, b)
            else:
                h = layer(h, sampled_input=True, generator=generator)
        return h

    def mean_mode(self) -> "BayesMLP":
        return set_mode(self, "mean")

    def sample_mode(self) -> "BayesMLP":
        return set_mode(self, "sample")


class SpikingConvNet(nn.Module):
    """Bayesian spiking conv net: [BayesConv2d → LIF → avg-pool 2]×k → flatten → BayesLinear → LIF.

    ``net(x, samples=M)``: x (T, B, C, H, W) -> (M, B, classes) logits.
    channels: conv widths, e.g. (2, 16, 32) for 2-polarity event frames.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], n_classes: int,
                 kernel_size: int = 3, beta=0.9, threshold=1.0, reset: str = "subtract",
                 surrogate="fast_sigmoid", readout: str = "membrane", mu_init: float = 1.0, sigma_init: float = 0.5,
                 init: str | None = None):
        super().__init__()
        mu_init, sigma_init = resolve_init(init, mu_init, sigma_init)
        c, h, w = input_shape
        channels = list(channels)
        if channels[0] != c:
            raise ValueError(f"channels[0]={channels[0]} must equal the input's C={c}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.input_shape, self.readout = tuple(input_shape), readout
        self.convs = nn.ModuleList(BayesConv2d(a, b, kernel_size, padding=kernel_size // 2,
                                               mu_init=mu_init, sigma_init=sigma_init)
                                   for a, b in zip(channels[:-1], channels[1:]))
        self.neurons = nn.ModuleList(LIF(beta, threshold, reset, surrogate) for _ in channels[1:])
        for _ in channels[1:]:
            h, w = h // 2, w // 2
        self.fc = BayesLinear(channels[-1] * h * w, n_classes, mu_init=mu_init, sigma_init=sigma_init)
        self.out_neuron = LIF(beta, threshold, reset, surrogate)

    def forward(self, x: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 5 or tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"SpikingConvNet expects input of shape (T, B, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")
        h = self.convs[0](x, samples=samples, generator=generator)           # (M, T, B, C, H, W)
        for i, conv in enumerate(self.convs):
            if i:
                h = conv(h, sampled_input=True, generator=generator)
            s = _lif_over_time(self.neurons[i], h)
            m, t, b = s.shape[:3]
            s = nn.functional.avg_pool2d(s.reshape(-1, *s.shape[3:]), 2)
            h = s.reshape(m, t, b, *s.shape[1:])
        h = self.fc(h.flatten(3), sampled_input=True, generator=generator)   # (M, T, B, classes)
        return _readout(self.out_neuron, h, self.readout)


def bayesianize(model: nn.Module, sigma_init: float = 0.5, sigma: float | None = None) -> nn.Module:
    """Replace every ``nn.Linear``/``nn.Conv2d`` in ``model`` (in place) by a Bayesian layer with
    μ = the existing weights and σ = sigma_init/√fan_in (or the absolute ``sigma``). Works on
    snnTorch and Norse networks. Returns the model. Run the result inside
    :func:`mesu_snn.sampled_weights` to share one draw per sample over a sequence."""
    if sigma is not None and not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if not sigma_init > 0:
        raise ValueError(f"sigma_init must be > 0, got {sigma_init!r}")
    for name, child in list(model.named_children()):
        if isinstance(child, BayesianLayer):
            continue
        if isinstance(child, nn.Linear):
            new = BayesLinear(child.in_features, child.out_features, bias=child.bias is not None,
                              sigma_init=sigma_init)
        elif isinstance(child, nn.Conv2d):
            if child.padding_mode != "zeros":
                raise ValueError(f"bayesianize: {name} uses padding_mode={child.padding_mode!r}; only 'zeros' is supported")
            new = BayesConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                              child.padding, child.dilation, child.groups, bias=child.bias is not None,
                              sigma_init=sigma_init)
        else:
            bayesianize(child, sigma_init, sigma)
            continue
        fan_in = child.weight[0].numel()
        s = sigma if sigma is not None else sigma_init / math.sqrt(fan_in)
        with torch.no_grad():
            new.weight_mu.copy_(child.weight)
            new.weight_sigma.fill_(s)
            if child.bias is not None:
                new.bias_mu.copy_(child.bias)
                new.bias_sigma.fill_(s)
        new.to(device=child.weight.device, dtype=child.weight.dtype)
        setattr(model, name, new)
    return model
