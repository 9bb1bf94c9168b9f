"""Neuromorphic export: NIR graphs, quantisation, pruning by signal-to-noise, sampled realisations."""
from .nir_export import DEFAULT_DT, from_nir, graph_to_model, model_to_graph, read_graph, to_nir
from .stages import SpikingSequential, model_stages, spiking_forward

__all__ = ["DEFAULT_DT", "to_nir", "from_nir", "model_to_graph", "graph_to_model", "read_graph",
           "SpikingSequential", "model_stages", "spiking_forward"]
