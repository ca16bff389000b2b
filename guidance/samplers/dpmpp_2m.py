"""CFG++ on DPM-Solver++ 2M (Chung et al., ICLR 2025, arXiv 2406.08070, Algorithm 3), in data-prediction form
with λ = −log σ (VE σ), h = λ_{i+1} − λ_i, r0 = h_{i−1}/h:
  x_{i+1}/α_{i+1} = x̂0_λ + e^{−h}·(x_i/α_i − x̂0_u) + (1 − e^{−h})/(2·r0)·(x̂0_λ − x̂0_u,prev).
The multistep history holds the previous step's x̂0_u and resets every call; the first and the final step are
first order; the final step (σ = 0) returns x̂0_λ. The correction coefficient is the one that reduces to
diffusers' DPM++ 2M (midpoint) when the two predictions are equal.
Conventions: docs/CONVENTIONS.md §15.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..plan import StepTable
from ..spaces import to_x0
from .base import SamplerCorrection, refuse


class DPMPP2MCorrection(SamplerCorrection):
    scheduler_class = "DPMSolverMultistepScheduler"

    def __init__(self) -> None:
        self._previous_x0_u: torch.Tensor | None = None

    def check(self, scheduler: Any) -> None:
        config = scheduler.config
        wanted = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                  "prediction_type": "epsilon", "thresholding": False, "final_sigmas_type": "zero",
                  "use_flow_sigmas": False}
        for key, value in wanted.items():
            if config.get(key, value) != value:
                raise refuse(scheduler, f"{key}={config.get(key)!r}",
                             f"CFG++ implements DPM++ 2M only: {', '.join(f'{k}={v!r}' for k, v in wanted.items())}.")

    def reset(self) -> None:
        self._previous_x0_u = None

    def correct(self, scheduler: Any, index: int, steps: StepTable, sample: torch.Tensor,
                prev_sample: torch.Tensor, u: torch.Tensor, g: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        sigma, sigma_next = float(scheduler.sigmas[index]), float(scheduler.sigmas[index + 1])
        a, s = steps.a[index], steps.s[index]
        x = sample.float()
        x0_g = to_x0(g, x, a, s, steps.prediction_type)
        x0_u = to_x0(u, x, a, s, steps.prediction_type)
        previous, self._previous_x0_u = self._previous_x0_u, x0_u
        if sigma_next == 0.0:
            return x0_g.to(prev_sample.dtype)
        decay = sigma_next / sigma  # e^{−h}
        alpha_next = 1.0 / math.sqrt(1.0 + sigma_next**2)
        update = x0_g + decay * (x / a - x0_u)
        if previous is not None:
            h = math.log(sigma / sigma_next)
            r0 = math.log(float(scheduler.sigmas[index - 1]) / sigma) / h
            update = update + (1.0 - decay) / (2.0 * r0) * (x0_g - previous)
        return (alpha_next * update).to(prev_sample.dtype)
