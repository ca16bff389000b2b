"""`inverse_linear` schedule: f(p) ∝ 2(1 − p), normalised to mean 1 over the run's steps.

Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024 (arXiv 2404.13040), §3.
"""

from __future__ import annotations

from .base import ShapeSchedule


class InverseLinear(ShapeSchedule):
    """Decreasing linear ramp (the paper finds it worse than constant)."""

    name = "inverse_linear"
    paper = "Wang et al., TMLR 2024 (arXiv 2404.13040)"
    summary = "f(p) ∝ 2(1 − p)"

    def shape(self, p: float) -> float:
        return 2.0 * (1.0 - p)
