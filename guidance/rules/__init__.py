"""Guidance rules: how the conditional and reference predictions are combined."""

from ..registry import Registry
from .apg import APG
from .base import Rule, RuleStep
from .cfg import CFG
from .cfg_zero_star import CFGZeroStar
from .cfgpp import CFGPlusPlus
from .fdg import FDG
from .pcg import PCG
from .tcfg import TCFG

RULES: Registry[Rule] = Registry("rule")
for _cls in (CFG, APG, CFGPlusPlus, CFGZeroStar, TCFG, FDG, PCG):
    RULES.register(_cls)

__all__ = ["RULES", "Rule", "RuleStep"]
