"""Guidance weight schedules: how strong guidance is at each step."""

from ..registry import Registry
from .base import Schedule
from .clamps import CLAMP_SCHEDULES
from .experts import Experts
from .interval import Interval
from .pag_adaptive import PAGAdaptive
from .pcs import PCS
from .shapes import SHAPE_SCHEDULES
from .steps import Steps

SCHEDULES: Registry[Schedule] = Registry("schedule")
for _cls in (*SHAPE_SCHEDULES, *CLAMP_SCHEDULES, PCS, Interval, Steps, PAGAdaptive, Experts):
    SCHEDULES.register(_cls)

__all__ = ["SCHEDULES", "Schedule"]
