"""A model as a flat chain of stages (Bayesian layer, LIF, pooling, flatten), the common form
that the NIR exporter, the chip-mapping tools and :class:`SpikingSequential` work on.

``model_stages(model)`` understands :class:`~mesu_snn.SpikingMLP`,
:class:`~mesu_snn.SpikingConvNet` and :class:`SpikingSequential`. In the chain the output layer
is a spiking LIF (the spikes a neuromorphic chip would emit); the membrane/count readout of
SpikingMLP/SpikingConvNet is applied on top of these spikes' currents by those classes, not here.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models import SpikingConvNet, SpikingMLP
from ..neurons import LIF
from ..synapses import BayesianLayer, mode_set, set_mode

__all__ = ["AvgPool", "Flatten", "SpikingSequential", "model_stages", "spiking_forward", "stage_shapes"]


class AvgPool(nn.Module):
    """Average pooling over the last two dims of (..., C, H, W); kernel = stride, no padding."""

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = int(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        y = nn.functional.avg_pool2d(x.reshape(-1, *x.shape[-3:]), self.kernel_size)
        return y.reshape(*lead, *y.shape[1:])


class Flatten(nn.Module):
    """Flatten the last ``ndim`` (neuron) dims: (..., C, H, W) -> (..., C·H·W)."""

    def __init__(self, ndim: int = 3):
        super().__init__()
        self.ndim = int(ndim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(x.dim() - self.ndim)


class SpikingSequential(nn.Module):
    """A chain of stages: BayesLinear/BayesConv2d, LIF, AvgPool, Flatten.

    ``net(x, samples=M)``: x (T, B, *in_shape) -> (M, T, B, *out_shape) output of the last
    stage (spikes when it is a LIF). ``input_shape``: the per-sample input shape (no T, B).
    """

    def __init__(self, stages, input_shape):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.input_shape = tuple(int(s) for s in input_shape)
        if not any(isinstance(s, BayesianLayer) for s in self.stages):
            raise ValueError("SpikingSequential needs at least one Bayesian layer")

    def forward(self, x: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        return _run(list(self.stages), self.input_shape, x, samples, generator)

    def mean_mode(self) -> "SpikingSequential":
        return set_mode(self, "mean")

    def sample_mode(self) -> "SpikingSequential":
        return set_mode(self, "sample")


def _apply(stage: nn.Module, h: torch.Tensor, generator=None) -> torch.Tensor:
    """One stage on (M, T, B, ...)."""
    if isinstance(stage, BayesianLayer):
        return stage(h, sampled_input=True, generator=generator)
    if isinstance(stage, LIF):
        return stage(h.transpose(0, 1)).transpose(0, 1)
    return stage(h)


def model_stages(model: nn.Module) -> tuple[list[nn.Module], tuple[int, ...]]:
    """(stages, input_shape) of a supported model; the stages are the model's own modules."""
    if isinstance(model, SpikingSequential):
        return list(model.stages), model.input_shape
    if isinstance(model, SpikingMLP):
        stages = []
        for layer, lif in zip(model.layers, model.neurons):
            stages += [layer, lif]
        return stages, (model.sizes[0],)
    if isinstance(model, SpikingConvNet):
        stages = []
        for conv, lif in zip(model.convs, model.neurons):
            stages += [conv, lif, AvgPool(2)]
        stages += [Flatten(3), model.fc, model.out_neuron]
        return stages, tuple(model.input_shape)
    raise ValueError(f"cannot map {type(model).__name__} to a chain of stages; supported: SpikingMLP, "
                     "SpikingConvNet, SpikingSequential")


@torch.no_grad()
def stage_shapes(stages, input_shape) -> list[tuple[int, ...]]:
    """Per-sample output shape of every stage (found by running one zero input)."""
    h = torch.zeros(1, 1, 1, *input_shape)
    shapes = []
    with mode_set(stages, "mean"):
        for s in stages:
            h = _apply(s, h)
            shapes.append(tuple(h.shape[3:]))
    return shapes


def spiking_forward(model: nn.Module, x: torch.Tensor, samples: int = 1,
                    generator: torch.Generator | None = None, layer_delay: int = 0) -> torch.Tensor:
    """Output spikes of the model's chain: x (T, B, *in) -> (M, T, B, out).

    In mean mode (``model.mean_mode()``) this is the w = μ network a NIR export describes.
    ``layer_delay=d`` delays the input of every synaptic layer by d steps (zeros first, the
    last d steps dropped): the spike propagation delay of chips whose synapses buffer one step
    (Lava/Loihi: d = 1, see :mod:`mesu_snn.export.loihi_fixed`)."""
    stages, input_shape = model_stages(model)
    return _run(stages, input_shape, x, samples, generator, layer_delay)


def _delay(h: torch.Tensor, d: int) -> torch.Tensor:
    """h (M, T, ...) delayed by d steps along T: zeros first, the last d steps dropped."""
    if d == 0:
        return h
    return torch.cat([torch.zeros_like(h[:, :d]), h[:, :-d]], dim=1) if d < h.shape[1] else torch.zeros_like(h)


def _run(stages, input_shape, x, samples, generator, layer_delay=0):
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not isinstance(layer_delay, int) or layer_delay < 0:
        raise ValueError(f"layer_delay must be an int >= 0, got {layer_delay!r}")
    if x.dim() < 3 or tuple(x.shape[2:]) != tuple(input_shape):
        raise ValueError(f"expected input of shape (T, B, {', '.join(map(str, input_shape))}), got {tuple(x.shape)}")
    h = x.unsqueeze(0).expand(samples, *x.shape)
    for s in stages:
        if layer_delay and isinstance(s, BayesianLayer):
            h = _delay(h, layer_delay)
        h = _apply(s, h, generator)
    return h
