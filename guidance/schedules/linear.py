"""`linear` schedule: f(p) ∝ 2p, normalised to mean 1 over the run's steps.

Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024 (arXiv 2404.13040), §3.
"""

from __future__ import annotations

from .base import ShapeSchedule


class Linear(ShapeSchedule):
    """Increasing linear ramp; the paper's recommended default."""

    name = "linear"
    paper = "Wang et al., TMLR 2024 (arXiv 2404.13040)"
    summary = "f(p) ∝ 2p"

    def shape(self, p: float) -> float:
        return 2.0 * p
