"""`constant` schedule: f(p) ∝ 1, normalised to mean 1 over the run's steps.

Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024 (arXiv 2404.13040), §3.
"""

from __future__ import annotations

from .base import ShapeSchedule


class Constant(ShapeSchedule):
    """Constant weight (plain CFG)."""

    name = "constant"
    paper = "Wang et al., TMLR 2024 (arXiv 2404.13040)"
    summary = "f(p) ∝ 1"

    def shape(self, p: float) -> float:
        return 1.0
