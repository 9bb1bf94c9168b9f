"""Pure tensor functions: LIF dynamics, surrogate spikes, and the MESU/BGD update equations."""
from .bgd import bgd_update
from .lif import LIFParameters, initial_membrane, lif_sequence, lif_step
from .mesu import clamp_to_sigma, mesu_update
from .surrogate import ATan, FastSigmoid, Heaviside, make_surrogate

__all__ = ["LIFParameters", "lif_step", "lif_sequence", "initial_membrane", "mesu_update",
           "clamp_to_sigma", "bgd_update", "FastSigmoid", "ATan", "Heaviside", "make_surrogate"]
