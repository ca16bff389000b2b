"""The clamped ramps of Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024
(arXiv 2404.13040), §4: w_i = 1 + max(c, (w − 1)·g(p_i)), an increasing ramp with a floor c on ω = w − 1, not
renormalised (docs/CONVENTIONS.md §3). One line per schedule: name, g(p), the formula `guidance list` shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import Field

from ..plan import StepTable
from .base import PAPER, AbsoluteSchedule

CLAMPS: dict[str, tuple[Callable[[float], float], str]] = {
    "clamp_linear": (lambda p: 2.0 * p, "w_i = 1 + max(c, (w − 1)·2p)"),
    "clamp_cosine": (lambda p: 1.0 - math.cos(math.pi * p), "w_i = 1 + max(c, (w − 1)·(1 − cos πp))"),
}


def clamp_schedule(name: str, g: Callable[[float], float], formula: str) -> type[AbsoluteSchedule]:
    """The registered schedule class of one table line; its parameter `c` is the floor on w − 1."""

    def scales(self: AbsoluteSchedule, w: float, steps: StepTable) -> list[float]:
        return [1.0 + max(self.c, (w - 1.0) * g(p)) for p in steps.progress]

    class_name = "".join(part.title() for part in name.split("_"))
    return type(class_name, (AbsoluteSchedule,), {
        "__doc__": f"Increasing ramp with a floor c on ω = w − 1: {formula}.", "__module__": __name__,
        "__annotations__": {"c": float}, "c": Field(2.0, ge=0, allow_inf_nan=False), "name": name,
        "paper": PAPER, "summary": formula, "scales": scales})


CLAMP_SCHEDULES = [clamp_schedule(name, *line) for name, line in CLAMPS.items()]
