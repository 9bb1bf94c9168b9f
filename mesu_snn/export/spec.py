"""A model's constructor arguments as a JSON-able dict ("spec"), and the model back from it.
Used by NIR metadata and checkpoints so that files can rebuild our own classes."""
from __future__ import annotations

import torch.nn as nn

from ..models import SpikingConvNet, SpikingMLP

__all__ = ["model_spec", "build_model"]


def model_spec(model: nn.Module) -> dict:
    """{"class": ..., constructor arguments} for SpikingMLP / SpikingConvNet; {"class":
    "SpikingSequential"} otherwise (whose structure lives in the NIR graph itself)."""
    if isinstance(model, SpikingMLP):
        return {"class": "SpikingMLP", "sizes": list(model.sizes), "readout": model.readout,
                "bias": model.layers[0].bias_mu is not None}
    if isinstance(model, SpikingConvNet):
        return {"class": "SpikingConvNet", "input_shape": list(model.input_shape),
                "channels": [model.convs[0].in_channels] + [c.out_channels for c in model.convs],
                "n_classes": model.fc.out_features, "kernel_size": model.convs[0].kernel_size[0],
                "readout": model.readout}
    return {"class": type(model).__name__}


def build_model(spec: dict) -> nn.Module:
    """A freshly initialised model from :func:`model_spec`'s dict; an optional ``"neuron"``
    entry {beta, threshold, reset, surrogate} sets the LIFs (default: the classes' defaults)."""
    if not isinstance(spec, dict) or "class" not in spec:
        raise ValueError(f"model spec must be a dict with a 'class' key, got {spec!r}")
    kind = spec["class"]
    neuron = dict(spec.get("neuron", {}))          # optional: beta, threshold, reset, surrogate
    if kind == "SpikingMLP":
        return SpikingMLP(spec["sizes"], readout=spec.get("readout", "membrane"), bias=spec.get("bias", True), **neuron)
    if kind == "SpikingConvNet":
        return SpikingConvNet(spec["input_shape"], spec["channels"], spec["n_classes"], spec.get("kernel_size", 3),
                              readout=spec.get("readout", "membrane"), **neuron)
    raise ValueError(f"cannot build a model of class {kind!r} from a spec (SpikingMLP, SpikingConvNet)")
