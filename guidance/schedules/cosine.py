"""`cosine` schedule: f(p) ∝ 1 − cos(πp), normalised to mean 1 over the run's steps.

Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024 (arXiv 2404.13040), §3.
"""

from __future__ import annotations

import math

from .base import ShapeSchedule


class Cosine(ShapeSchedule):
    """Increasing cosine ramp."""

    name = "cosine"
    paper = "Wang et al., TMLR 2024 (arXiv 2404.13040)"
    summary = "f(p) ∝ 1 − cos(πp)"

    def shape(self, p: float) -> float:
        return 1.0 - math.cos(math.pi * p)
