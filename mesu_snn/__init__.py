"""mesu_snn: continual learning in spiking neural networks with Bayesian, metaplastic synapses.

Core API::

    import mesu_snn as ms
    net = ms.SpikingMLP([784, 512, 10], beta=0.9)
    out = net(x, samples=8)                 # x (T, B, 784) -> (8, B, 10)
    loss = ms.nll_loss(out, y)              # mean over samples, sum over the batch
    opt = ms.MESU(net, memory=300_000, sigma_prior=0.1)   # memory N in samples
    loss.backward(); opt.step(batch_size=len(y)); opt.zero_grad()

Non-spiking: ``ms.BayesMLP([784, 50, 10])`` maps x (B, 784) -> (M, B, 10) logits.
"""
from . import distributed, export, functional, kernels, observe
from .functional.surrogate import ATan, FastSigmoid, Heaviside
from .losses import nll_loss, predictive_log_probs
from .models import BayesMLP, SpikingConvNet, SpikingMLP, bayesianize
from .neurons import LIF
from .build import build_trainer
from .config import load_config
from .rules import BGD, MESU, make_rule
from .trainer import Trainer
from .errors import ChipConstraintError
from .export import from_nir, to_netx, to_nir
from .runs import SigmaRecorder
from .synapses import (INITS, BayesConv2d, BayesianLayer, BayesLinear, bayesian_pairs, fold_samples,
                       sampled_weights, set_mode, unfold_samples)

from ._version import __version__  # noqa: E402

__all__ = ["functional", "kernels", "distributed", "observe", "export", "SigmaRecorder", "to_nir", "from_nir", "to_netx", "ChipConstraintError", "BayesLinear", "BayesConv2d", "BayesianLayer", "LIF", "SpikingMLP",
           "SpikingConvNet", "BayesMLP", "INITS", "bayesianize", "MESU", "BGD", "nll_loss", "predictive_log_probs",
           "sampled_weights", "bayesian_pairs", "set_mode", "fold_samples", "unfold_samples",
           "FastSigmoid", "ATan", "Heaviside", "Trainer", "make_rule", "load_config", "build_trainer",
           "__version__"]
