"""`pag_adaptive` schedule: w_i − 1 = max(0, (w − 1) − rate·(1000 − t_i)), t_i the scheduler's timestep.

diffusers' PAG pipelines, `pag_adaptive_scale` (Ahn et al., ECCV 2024, arXiv 2403.17377): the perturbed-attention
scale falls linearly as the timestep falls and is 0 (w = 1: no guidance, no rows) once it would go negative. As a
term's schedule it acts on s exactly as on w − 1 (§20). Not renormalised. Conventions: docs/CONVENTIONS.md §25.
"""

from __future__ import annotations

from pydantic import Field

from ..plan import StepTable
from .base import AbsoluteSchedule


class PAGAdaptive(AbsoluteSchedule):
    """Linearly decreasing strength in the timestep, floored at no guidance."""

    name = "pag_adaptive"
    paper = "Ahn et al., ECCV 2024 (arXiv 2403.17377), diffusers' pag_adaptive_scale"
    summary = "w_i = 1 + max(0, (w − 1) − rate·(1000 − t_i))"

    rate: float = Field(0.0, ge=0.0, allow_inf_nan=False)

    def scales(self, w: float, steps: StepTable) -> list[float]:
        return [1.0 + max(0.0, (w - 1.0) - self.rate * (1000.0 - t)) for t in steps.timesteps]
