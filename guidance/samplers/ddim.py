"""CFG++ on DDIM (Chung et al., ICLR 2025, arXiv 2406.08070, Algorithm 1):
x_{t−1} = sqrt(ᾱ_{t−1})·x̂0_λ + sqrt(1 − ᾱ_{t−1} − σ_η²)·ε_u + σ_η·z (σ_η = 0 for the paper's η = 0).
The previous ᾱ follows diffusers' DDIM exactly (t − T/N, the final ᾱ at the last step).
"""

from __future__ import annotations

import math
from typing import Any

from ..plan import StepTable
from .base import SingleStepCorrection, refuse


class DDIMCorrection(SingleStepCorrection):
    scheduler_class = "DDIMScheduler"

    def check(self, scheduler: Any) -> None:
        if scheduler.config.clip_sample or scheduler.config.thresholding:
            raise refuse(scheduler, "clip_sample or thresholding (x̂0 clipping changes ε)",
                         "Build the scheduler with clip_sample=False, thresholding=False.")

    @staticmethod
    def _alphas(scheduler: Any, index: int, steps: StepTable) -> tuple[float, float]:
        """ᾱ of the step and of the previous timestep, as diffusers' DDIM takes them."""
        t = int(steps.timesteps[index])
        prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        alpha = float(scheduler.alphas_cumprod[t])
        return alpha, float(scheduler.alphas_cumprod[prev_t]) if prev_t >= 0 else float(scheduler.final_alpha_cumprod)

    def next_noise(self, scheduler: Any, index: int, steps: StepTable, kwargs: dict[str, Any]) -> float:
        alpha, alpha_prev = self._alphas(scheduler, index, steps)
        eta = float(kwargs.get("eta", 0.0) or 0.0)
        variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
        return math.sqrt(max(1.0 - alpha_prev - eta**2 * variance, 0.0))

    def next_signal(self, scheduler: Any, index: int, steps: StepTable) -> float:
        return math.sqrt(self._alphas(scheduler, index, steps)[1])


class CogVideoXDDIMCorrection(DDIMCorrection):
    """CogVideoX's DDIM (CogVideoXDDIMScheduler): its step x' = a_t·x + b_t·x̂0 with a_t = sqrt((1 − ᾱ')/(1 − ᾱ)) and
    b_t = sqrt(ᾱ') − sqrt(ᾱ)·a_t is DDIM's η = 0 step sqrt(ᾱ')·x̂0 + sqrt(1 − ᾱ')·ε̂ on its SNR-shifted ᾱ, the same
    previous ᾱ, no clipping and no η."""

    scheduler_class = "CogVideoXDDIMScheduler"

    def check(self, scheduler: Any) -> None:
        """Its step never clips x̂0."""

    def next_noise(self, scheduler: Any, index: int, steps: StepTable, kwargs: dict[str, Any]) -> float:
        return super().next_noise(scheduler, index, steps, {})
