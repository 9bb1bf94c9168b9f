"""Learning rules as torch optimizers: MESU, BGD (and the continual-learning baselines)."""
from .bgd import BGD
from .mesu import MESU

__all__ = ["MESU", "BGD"]
