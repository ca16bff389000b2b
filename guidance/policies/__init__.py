"""Policies: whether the reference branch is evaluated at all at a step."""

from ..registry import Registry
from .adaptive import Adaptive
from .always import Always
from .base import Policy
from .linear_ag import LinearAG

POLICIES: Registry[Policy] = Registry("policy")
for _cls in (Always, Adaptive, LinearAG):
    POLICIES.register(_cls)

__all__ = ["POLICIES", "Policy"]
