"""`clamp_cosine` schedule: w_i = 1 + max(c, (w − 1)·(1 − cos πp)), the cosine ramp with a floor c on w − 1.

Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024 (arXiv 2404.13040), §4.
Not renormalised (convention 3 of this project).
"""

from __future__ import annotations

import math

from pydantic import Field

from ..plan import StepTable
from .base import AbsoluteSchedule


class ClampCosine(AbsoluteSchedule):
    """Increasing cosine ramp with a floor c on ω = w − 1."""

    name = "clamp_cosine"
    paper = "Wang et al., TMLR 2024 (arXiv 2404.13040)"
    summary = "w_i = 1 + max(c, (w − 1)·(1 − cos πp))"

    c: float = Field(2.0, ge=0, allow_inf_nan=False)

    def scales(self, w: float, steps: StepTable) -> list[float]:
        return [1.0 + max(self.c, (w - 1.0) * (1.0 - math.cos(math.pi * p))) for p in steps.progress]
