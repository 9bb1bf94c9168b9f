"""Learning rules: MESU and BGD as torch optimizers; the trainer's :class:`Rule` wrappers for
MESU, BGD, SGD, Adam, online EWC and SI, built by :func:`make_rule`."""
from .baselines import AdamRule, BGDRule, MESURule, SGDRule, make_rule
from .bgd import BGD
from .mesu import MESU
from .rule import Rule

__all__ = ["MESU", "BGD", "Rule", "MESURule", "BGDRule", "SGDRule", "AdamRule", "make_rule"]
