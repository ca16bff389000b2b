"""`clamp_linear` schedule: w_i = 1 + max(c, (w − 1)·2p), the linear ramp never below a floor c on w − 1.

Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024 (arXiv 2404.13040), §4.
Not renormalised (convention 3 of this project).
"""

from __future__ import annotations

from pydantic import Field

from ..plan import StepTable
from .base import AbsoluteSchedule


class ClampLinear(AbsoluteSchedule):
    """Increasing linear ramp with a floor c on ω = w − 1."""

    name = "clamp_linear"
    paper = "Wang et al., TMLR 2024 (arXiv 2404.13040)"
    summary = "w_i = 1 + max(c, (w − 1)·2p)"

    c: float = Field(2.0, ge=0, allow_inf_nan=False)

    def scales(self, w: float, steps: StepTable) -> list[float]:
        return [1.0 + max(self.c, (w - 1.0) * 2.0 * p) for p in steps.progress]
