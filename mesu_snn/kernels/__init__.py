"""Fast paths: a fused multi-step LIF, local reparameterisation of a data-fed Bayesian layer, fused MESU/BGD updates, one-node Gaussian weights, and a
sync-free (CUDA-graph capturable) training step. The equations live in :mod:`mesu_snn.functional`."""
from .fused_update import all_finite, fused_bgd_step, fused_mesu_step
from .gaussian_weight import gaussian_weight
from .graph_step import GraphedTrainStep, guarded_update
from .lif_fused import fast_paths, fast_paths_enabled, lif_sequence_fused, supports
from .local_linear import local_linear
from .spike_linear import spike_linear

__all__ = ["lif_sequence_fused", "supports", "fast_paths", "fast_paths_enabled", "fused_mesu_step",
           "fused_bgd_step", "all_finite", "guarded_update", "GraphedTrainStep", "spike_linear",
           "gaussian_weight", "local_linear"]
