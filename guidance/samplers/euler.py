"""CFG++ on Euler discrete (Chung et al., ICLR 2025, arXiv 2406.08070, Algorithm 2, VE form):
x_{i+1} = x̂0_λ + σ_{i+1}·(x_i − x̂0_u)/σ_i, i.e. the Euler step from ε_λ plus σ_{i+1}·(ε_u − ε_λ).
The final step (σ = 0) returns x̂0_λ.
"""

from __future__ import annotations

from typing import Any

from ..plan import StepTable
from .base import SingleStepCorrection, refuse


class EulerCorrection(SingleStepCorrection):
    scheduler_class = "EulerDiscreteScheduler"

    def next_noise(self, scheduler: Any, index: int, steps: StepTable, kwargs: dict[str, Any]) -> float:
        if float(kwargs.get("s_churn", 0.0) or 0.0) != 0.0:
            raise refuse(scheduler, "s_churn > 0 (stochastic Euler)", "Leave s_churn at 0.")
        return float(scheduler.sigmas[index + 1])

    def next_signal(self, scheduler: Any, index: int, steps: StepTable) -> float:
        return 1.0  # VE latents x = x0 + σ·n
