"""`pcs` schedule: the parameterised cosine schedule f(p) ∝ (1 − cos(π·p^κ))/2, normalised to mean 1.

Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024 (arXiv 2404.13040), §4
(parametrised schedulers, after MUSE). The paper tunes κ per model and finds no value that generalises;
κ = 1 is the `cosine` schedule.
"""

from __future__ import annotations

import math

from pydantic import Field

from .base import PAPER, ShapeSchedule


class PCS(ShapeSchedule):
    """Parameterised cosine: larger κ keeps guidance low for longer, then ramps up late."""

    name = "pcs"
    paper = PAPER
    summary = "f(p) ∝ (1 − cos(π·p^κ))/2"

    kappa: float = Field(2.0, gt=0, allow_inf_nan=False)

    def shape(self, p: float) -> float:
        return (1.0 - math.cos(math.pi * p**self.kappa)) / 2.0
