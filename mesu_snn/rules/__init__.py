"""Learning rules: MESU and BGD as torch optimizers; the trainer's :class:`Rule` wrappers for
MESU, BGD, SGD, Adam, online EWC and SI (each next to its optimizer), the eligibility-trace rules mesu_online and sgd_online, built by :func:`make_rule`
from the one registry :data:`RULES`; whole training steps: :class:`StreamingStep` (CPU, no autograd
graph) and :class:`GraphedTrainStep` (one CUDA graph)."""
from .bgd import BGD, BGDRule
from .ewc import OnlineEWC
from .graph_step import GraphedTrainStep, guarded_update
from .mesu import MESU, MESURule
from .online import OnlineEligibility, OnlineMESURule, OnlineSGDRule
from .registry import RULES, hyperparameters, make_rule
from .rule import Rule
from .sgd import AdamRule, SGDRule
from .si import SynapticIntelligence
from .streaming_step import StreamingStep, unsupported_reason

__all__ = ["MESU", "BGD", "Rule", "MESURule", "BGDRule", "SGDRule", "AdamRule", "OnlineEWC",
           "SynapticIntelligence", "OnlineEligibility", "OnlineMESURule", "OnlineSGDRule", "make_rule", "RULES", "hyperparameters", "GraphedTrainStep", "guarded_update",
           "StreamingStep", "unsupported_reason"]
