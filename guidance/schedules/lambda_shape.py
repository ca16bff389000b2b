"""`lambda_shape` schedule: f(p) ∝ 2(1 − |1 − 2p|), normalised to mean 1 over the run's steps.

Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024 (arXiv 2404.13040), §3.
"""

from __future__ import annotations

from .base import ShapeSchedule


class LambdaShape(ShapeSchedule):
    """Low at both ends, high in the middle."""

    name = "lambda_shape"
    paper = "Wang et al., TMLR 2024 (arXiv 2404.13040)"
    summary = "f(p) ∝ 2(1 − |1 − 2p|)"

    def shape(self, p: float) -> float:
        return 2.0 * (1.0 - abs(1.0 - 2.0 * p))
