"""Neuromorphic export: NIR graphs (:mod:`~mesu_snn.export.nir_export`, whose docstring holds the
time convention and the compatibility options), Lava netx HDF5 for Loihi 2
(:mod:`~mesu_snn.export.netx`) with a fixed-point model of the chip
(:mod:`~mesu_snn.export.loihi_fixed`), chip profiles checked before export
(:mod:`~mesu_snn.export.targets`), quantisation, pruning by signal-to-noise, sampled weight
realisations, the online rule's chip state
(:mod:`~mesu_snn.export.online_state`, HDF5 schema in its docstring)."""
from .evaluate import accuracy
from .loihi_fixed import run_fixed
from .netx import chip_float_model, loihi_layers, read_netx, to_netx
from .nir_export import DEFAULT_DT, from_nir, graph_to_model, model_to_graph, read_graph, to_nir
from .online_state import export_online_state, read_online_state
from .prune import prune_by_snr, pruning_curve, snr, snr_threshold_for_fraction
from .quantize import quantize_model, quantize_tensor
from .realisations import realisation_accuracies, sample_realisations
from .stages import SpikingSequential, model_stages, spiking_forward

__all__ = ["DEFAULT_DT", "to_nir", "from_nir", "model_to_graph", "graph_to_model", "read_graph",
           "SpikingSequential", "model_stages", "spiking_forward", "quantize_tensor", "quantize_model",
           "snr", "prune_by_snr", "snr_threshold_for_fraction", "pruning_curve", "sample_realisations",
           "realisation_accuracies", "accuracy", "to_netx", "read_netx", "loihi_layers", "chip_float_model",
           "run_fixed", "export_online_state", "read_online_state"]
