"""Fast paths: a fused multi-step LIF, local reparameterisation of a data-fed Bayesian layer,
fused MESU/BGD updates, one-node Gaussian weights and a bool-saving spike matmul. Each is
checked equal (or, for the local estimator, equal in distribution) to its readable twin in
:mod:`mesu_snn.functional`; the modules that use them choose them, and
``with fast_paths(False):`` (the one switch) runs the readable code everywhere."""
from .fused_update import all_finite, fused_bgd_step, fused_mesu_step
from .gaussian_weight import gaussian_weight
from .lif_fused import lif_sequence_fused, supports
from .local_linear import local_linear
from .spike_linear import spike_linear
from .switch import fast_paths, fast_paths_enabled

__all__ = ["lif_sequence_fused", "supports", "fast_paths", "fast_paths_enabled", "fused_mesu_step",
           "fused_bgd_step", "all_finite", "spike_linear", "gaussian_weight", "local_linear"]
