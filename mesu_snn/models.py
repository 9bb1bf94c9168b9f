"""Ready-made Bayesian spiking networks, and ``bayesianize`` for any torch model."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from .neurons import LIF
from .synapses import BayesConv2d, BayesianLayer, BayesLinear, resolve_init, set_mode

__all__ = ["SpikingMLP", "SpikingConvNet", "BayesMLP", "bayesianize", "READOUTS", "ACTIVATIONS", "model_spec",
           "model_from_spec"]

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}

READOUTS = ("count", "membrane")


def _lif_over_time(lif: LIF, h: torch.Tensor) -> torch.Tensor:
    """h: (M, T, ...) currents -> (M, T, ...) spikes, LIF run over dim 1 (no transposed copies)."""
    return lif(h, time_dim=1)


def _record(lif: LIF, h: torch.Tensor, rec: dict | None) -> torch.Tensor:
    """Spikes of ``lif`` over dim 1 of h (M, T, ...); with ``rec`` also store spikes and membrane."""
    if rec is None:
        return _lif_over_time(lif, h)
    s, v = lif(h, return_membrane=True, time_dim=1)
    rec["spikes"].append(s)
    rec["membrane"].append(v)
    return s


def _readout(lif: LIF, h: torch.Tensor, readout: str) -> torch.Tensor:
    """h: (M, T, B, C) output-layer currents -> (M, B, C) logits."""
    if readout == "count":
        return _lif_over_time(lif, h).sum(1)
    # membrane: non-spiking leaky integrator with the output layer's beta, averaged over time
    return lif.leaky_integrate(h, time_dim=1).mean(1)


class SpikingMLP(nn.Module):
    """Fully connected Bayesian spiking network: BayesLinear → LIF for every layer.

    ``net(x, samples=M)``: x (T, B, sizes[0]) spikes or currents -> (M, B, sizes[-1]) logits,
    one per weight sample (M = 1 in mean mode). readout ``"count"``: output spike counts over
    the T steps (as in snnTorch's tutorials); ``"membrane"``: time-averaged membrane of a
    non-resetting output layer. beta, threshold, reset, surrogate, reset_delay: see :class:`~mesu_snn.LIF`
    (``reset="zero", reset_delay=False, readout="count"`` is the convention NIR exports exactly).
    ``estimator``: the input layer's (see :class:`~mesu_snn.BayesLinear`): ``"weights"`` (default,
    exact weight draws) or ``"local"`` (pre-activations sampled over the T steps; same output law
    per example, unbiased gradients, fewer normals: M·T per (example, neuron) instead of M·in).
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
                 mu_init: float = 1.0, sigma_init: float = 0.5, estimator: str = "weights", init: str | None = None,
                 reset_delay: bool = True):
        super().__init__()
        mu_init, sigma_init = resolve_init(init, mu_init, sigma_init)
        sizes = list(sizes)
        if len(sizes) < 2 or any((not isinstance(s, int)) or s < 1 for s in sizes):
            raise ValueError(f"sizes must list >= 2 positive layer widths, got {sizes!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.sizes, self.readout = sizes, readout
        self.spec = {"class": "SpikingMLP", "sizes": sizes, "readout": readout, "bias": bias, "mu_init": mu_init,
                     "sigma_init": sigma_init, "estimator": estimator,
                     "neuron": _neuron_spec(beta, threshold, reset, surrogate, reset_delay)}
        self.layers = nn.ModuleList(BayesLinear(a, b, bias=bias, mu_init=mu_init, sigma_init=sigma_init,
                                                estimator=estimator if i == 0 else "weights")
                                    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))
        self.neurons = nn.ModuleList(LIF(beta, threshold, reset, surrogate, reset_delay=reset_delay)
                                     for _ in sizes[1:])

    def forward(self, x: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None,
                record: bool = False):
        """x: (T, B, sizes[0]) input spikes or currents -> logits (M, B, sizes[-1]), one per weight
        sample (M = ``samples``; 1 in mean mode). ``record=True`` returns ``(logits, rec)`` with
        ``rec["spikes"]`` and ``rec["membrane"]``: one (M, T, B, width) tensor per LIF layer (the
        output layer's spikes are those of its spiking LIF also for the membrane readout), for
        plots and spike regularisers (gradients flow through them)."""
        if x.dim() != 3 or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"SpikingMLP expects input of shape (T, B, {self.sizes[0]}), got {tuple(x.shape)}")
        rec = {"spikes": [], "membrane": []} if record else None
        h = self.layers[0](x, samples=samples, generator=generator)         # (M, T, B, H)
        for i in range(1, len(self.layers)):
            s = _record(self.neurons[i - 1], h, rec)
            h = self.layers[i](s, sampled_input=True, generator=generator, spikes=True)
        if record:
            _record(self.neurons[-1], h, rec)
            return _readout(self.neurons[-1], h, self.readout), rec
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
        self.spec = {"class": "BayesMLP", "sizes": sizes, "activation": activation, "bias": bias, "init": None,
                     "mu_init": mu_init, "sigma_init": sigma_init}
        self.layers = nn.ModuleList(BayesLinear(a, b, bias=bias, mu_init=mu_init, sigma_init=sigma_init)
                                    for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"BayesMLP expects input of shape (B, {self.sizes[0]}), got {tuple(x.shape)}")
        act = ACTIVATIONS[self.activation]
        h = self.layers[0](x, samples=samples, generator=generator)         # (M, B, H)
        for layer in self.layers[1:]:
            h = layer(act(h), sampled_input=True, generator=generator)
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
                 init: str | None = None, reset_delay: bool = True):
        super().__init__()
        mu_init, sigma_init = resolve_init(init, mu_init, sigma_init)
        c, h, w = input_shape
        channels = list(channels)
        if channels[0] != c:
            raise ValueError(f"channels[0]={channels[0]} must equal the input's C={c}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.input_shape, self.readout = tuple(input_shape), readout
        self.spec = {"class": "SpikingConvNet", "input_shape": list(input_shape), "channels": channels,
                     "n_classes": n_classes, "kernel_size": kernel_size, "readout": readout, "mu_init": mu_init,
                     "sigma_init": sigma_init,
                     "neuron": _neuron_spec(beta, threshold, reset, surrogate, reset_delay)}
        self.convs = nn.ModuleList(BayesConv2d(a, b, kernel_size, padding=kernel_size // 2,
                                               mu_init=mu_init, sigma_init=sigma_init)
                                   for a, b in zip(channels[:-1], channels[1:]))
        self.neurons = nn.ModuleList(LIF(beta, threshold, reset, surrogate, reset_delay=reset_delay)
                                     for _ in channels[1:])
        for _ in channels[1:]:
            h, w = h // 2, w // 2
        self.fc = BayesLinear(channels[-1] * h * w, n_classes, mu_init=mu_init, sigma_init=sigma_init)
        self.out_neuron = LIF(beta, threshold, reset, surrogate, reset_delay=reset_delay)

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


def _plain(v):
    """A JSON-able copy of a constructor argument (tensors -> numbers or lists)."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.dim() == 0 else v.tolist()
    return v


def _neuron_spec(beta, threshold, reset, surrogate, reset_delay=True) -> dict:
    sur = surrogate
    if not isinstance(sur, (str, tuple, list)):            # an instance: (name, parameter)
        from dataclasses import astuple
        name = {"FastSigmoid": "fast_sigmoid", "ATan": "atan", "Heaviside": "heaviside"}[type(sur).__name__]
        vals = astuple(sur)
        sur = [name, vals[0]] if vals else name
    return {"beta": _plain(beta), "threshold": _plain(threshold), "reset": reset,
            "surrogate": list(sur) if isinstance(sur, tuple) else sur, "reset_delay": bool(reset_delay)}


_CLASSES = {"SpikingMLP": SpikingMLP, "SpikingConvNet": SpikingConvNet, "BayesMLP": BayesMLP}


def model_spec(model: nn.Module) -> dict:
    """The description of one of our models: {"class": ..., constructor arguments}, JSON-able.
    Saved in every checkpoint and NIR file so that readers rebuild the model instead of guessing
    it; {"class": type name} for any other module."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, dict) and spec.get("class") in _CLASSES:
        return json_copy(spec)
    return {"class": type(model).__name__}


def json_copy(d):
    import json
    return json.loads(json.dumps(d))


def model_from_spec(spec: dict, seed: int | None = None) -> nn.Module:
    """A freshly initialised model from :func:`model_spec`'s dict. With ``seed`` the initial μ
    come from that seed without touching the global random state."""
    if not isinstance(spec, dict) or spec.get("class") not in _CLASSES:
        raise ValueError(f"model spec must be a dict with 'class' one of {', '.join(_CLASSES)}, got {spec!r}")
    kw = {k: v for k, v in spec.items() if k not in ("class", "neuron")}
    neuron = dict(spec.get("neuron", {}))
    if isinstance(neuron.get("surrogate"), list):
        neuron["surrogate"] = tuple(neuron["surrogate"])
    try:
        if seed is None:
            return _CLASSES[spec["class"]](**kw, **neuron)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _CLASSES[spec["class"]](**kw, **neuron)
    except TypeError as e:
        raise ValueError(f"model spec {spec!r} does not fit {spec['class']}: {e}") from None


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
