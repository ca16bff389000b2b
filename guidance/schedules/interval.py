"""`interval` schedule: guidance only in a limited interval of noise levels, σ_lo < σ_i ≤ σ_hi.

Kynkäänniemi et al., "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in
Diffusion Models", NeurIPS 2024 (arXiv 2404.07724), §3: w_i = w inside the interval, 1 outside (no
unconditional evaluation there). σ is the noise-to-signal ratio s/a of the step. Defaults: the paper's
EDM2/SD-XL interval (0.28, 5.42].
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from ..plan import StepTable
from .base import WindowSchedule


class Interval(WindowSchedule):
    """Guide only while sigma_lo < σ ≤ sigma_hi."""

    name = "interval"
    paper = "Kynkäänniemi et al., NeurIPS 2024 (arXiv 2404.07724)"
    summary = "w inside (sigma_lo, sigma_hi], 1 outside"

    sigma_lo: float = Field(0.28, ge=0)
    sigma_hi: float = Field(5.42, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        if not self.sigma_lo < self.sigma_hi or math.isnan(self.sigma_lo):
            raise ValueError(f"sigma_lo ({self.sigma_lo}) must be below sigma_hi ({self.sigma_hi})")
        return self

    def inside(self, steps: StepTable) -> list[bool]:
        return [self.sigma_lo < sigma <= self.sigma_hi for sigma in steps.sigma]
