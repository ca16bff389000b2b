"""`steps` schedule: guide only on the steps i of a run of N with start·N < i < stop·N.

Stable Diffusion 3's skip-layer guidance window (diffusers' StableDiffusion3Pipeline, `skip_layer_guidance_start`
and `skip_layer_guidance_stop`, defaults 0.01 and 0.2): outside it w = 1 (a term's s = 0, its rows not evaluated).
Conventions: docs/CONVENTIONS.md §24.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ..plan import StepTable
from .base import WindowSchedule


class Steps(WindowSchedule):
    """Guide only while start·N < i < stop·N."""

    name = "steps"
    paper = "Stable Diffusion 3.5 skip-layer guidance (diffusers StableDiffusion3Pipeline)"
    summary = "w on steps start·N < i < stop·N, 1 elsewhere"

    start: float = Field(0.01, ge=0.0, le=1.0)
    stop: float = Field(0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Steps:
        if not self.start < self.stop:
            raise ValueError(f"start ({self.start}) must be below stop ({self.stop})")
        return self

    def inside(self, steps: StepTable) -> list[bool]:
        n = len(steps)
        return [self.start * n < i < self.stop * n for i in range(n)]
