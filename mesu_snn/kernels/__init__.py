"""Fast paths: a fused multi-step LIF and a fused MESU/BGD update (see each module)."""
from .fused_update import fused_bgd_step, fused_mesu_step
from .lif_fused import fast_paths, fast_paths_enabled, lif_sequence_fused, supports

__all__ = ["lif_sequence_fused", "supports", "fast_paths", "fast_paths_enabled", "fused_mesu_step", "fused_bgd_step"]
