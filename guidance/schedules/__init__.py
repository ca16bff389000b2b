"""Guidance weight schedules: how strong guidance is at each step."""

from ..registry import Registry
from .base import Schedule
from .clamps import CLAMP_SCHEDULES
from .interval import Interval
from .pcs import PCS
from .shapes import SHAPE_SCHEDULES

SCHEDULES: Registry[Schedule] = Registry("schedule")
for _cls in (*SHAPE_SCHEDULES, *CLAMP_SCHEDULES, PCS, Interval):
    SCHEDULES.register(_cls)

__all__ = ["SCHEDULES", "Schedule"]
