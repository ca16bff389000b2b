"""CFG++ on flow-matching Euler (Chung et al., arXiv 2406.08070, the general form x' = a'·x̂0_λ + s'·n̂_u
with a = 1 − σ, s = σ): the Euler velocity step plus σ_{i+1}·(n̂_u − n̂_λ), n̂ = x + (1 − σ)·v.
The final step (σ = 0) returns x̂0_λ.
"""

from __future__ import annotations

from typing import Any

from ..plan import StepTable
from .base import SingleStepCorrection, refuse


class FlowEulerCorrection(SingleStepCorrection):
    scheduler_class = "FlowMatchEulerDiscreteScheduler"

    def check(self, scheduler: Any) -> None:
        if scheduler.config.get("stochastic_sampling", False):
            raise refuse(scheduler, "stochastic_sampling", "Build the scheduler with stochastic_sampling=False.")

    def next_noise(self, scheduler: Any, index: int, steps: StepTable, kwargs: dict[str, Any]) -> float:
        if kwargs.get("per_token_timesteps") is not None:
            raise refuse(scheduler, "per_token_timesteps", "Call it without per-token timesteps.")
        return float(scheduler.sigmas[index + 1])

    def next_signal(self, scheduler: Any, index: int, steps: StepTable) -> float:
        return 1.0 - float(scheduler.sigmas[index + 1])
