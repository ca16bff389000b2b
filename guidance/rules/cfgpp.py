"""`cfgpp`: CFG++, manifold-constrained classifier-free guidance.

Chung et al., "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models", ICLR 2025
(arXiv 2406.08070), Algorithm 1 (DDIM) and Algorithms 2–3 (Euler, DPM++ 2M): the step uses the guided
estimate x̂0_λ = x̂0_u + λ·(x̂0_c − x̂0_u) but renoises with the UNCONDITIONAL noise estimate ε_u:
  DDIM: x_{t−1} = sqrt(ᾱ_{t−1})·x̂0_λ + sqrt(1 − ᾱ_{t−1})·ε_u.
The scale is λ ∈ [0, 1] (the paper's examples use 0.6). The denoiser returns u + λ·(c − u); the sampler
correction (guidance/samplers) turns the scheduler's step into the CFG++ step. A schedule multiplies λ by
its factor f_i (mean λ over the run; an increasing ramp may exceed 1 late in the run;
interval: λ inside, conditional-only steps outside; docs/CONVENTIONS.md §9).
"""

from __future__ import annotations

import math

from ..errors import GuidanceError
from ..plan import StepTable
from ..schedules.base import Schedule
from .cfg import CFG


class CFGPlusPlus(CFG):
    """Guided x̂0, unconditional renoising."""

    name = "cfgpp"
    paper = "Chung et al., ICLR 2025 (arXiv 2406.08070)"
    summary = "x̂0_λ = x̂0_u + λ(x̂0_c − x̂0_u), renoised with ε_u"
    default_scale = 0.6
    corrects_sampler = True

    def check_scale(self, scale: float) -> None:
        if not (math.isfinite(scale) and 0.0 <= scale <= 1.0):
            raise GuidanceError(
                f"CFG++ scale λ = {scale!r} is out of range: the paper defines λ ∈ [0, 1] (0.6 in its "
                "examples; λ ∈ [0, 1] behaves like CFG w ∈ [1, 12.5] at 50 DDIM steps). Set `scale` accordingly."
            )

    def step_scales(self, scale: float, schedule: Schedule, steps: StepTable) -> list[float | None]:
        return [None if f is None else scale * f for f in schedule.factors(steps)]

