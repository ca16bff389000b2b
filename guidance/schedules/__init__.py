"""Guidance weight schedules: how strong guidance is at each step."""

from ..registry import Registry
from .base import Schedule
from .clamp_cosine import ClampCosine
from .clamp_linear import ClampLinear
from .constant import Constant
from .cosine import Cosine
from .interval import Interval
from .inverse_linear import InverseLinear
from .lambda_shape import LambdaShape
from .linear import Linear
from .pcs import PCS
from .sine import Sine
from .v_shape import VShape

SCHEDULES: Registry[Schedule] = Registry("schedule")
for _cls in (Constant, Linear, InverseLinear, Cosine, Sine, VShape, LambdaShape, ClampLinear, ClampCosine, PCS,
             Interval):
    SCHEDULES.register(_cls)

__all__ = ["SCHEDULES", "Schedule"]
