"""`experts` schedule: one scale per expert of a two-expert pipeline (Wan 2.2's `guidance_scale` and
`guidance_scale_2`).

Wan 2.2 (diffusers' WanPipeline / WanImageToVideoPipeline with `transformer_2`) runs its first expert on the steps
with timestep t_i ≥ boundary_ratio·num_train_timesteps and its second on the rest, with `guidance_scale` and
`guidance_scale_2`. Here w_i = w on the first expert's steps and `scale_2` on the second's; the boundary is the
pipeline's own unless `boundary` (a ratio, as the pipeline's `boundary_ratio`) is given. As a term's schedule it acts
on 1 + s as on w (§20), so `scale_2` is 1 + s there. Not renormalised. Conventions: docs/CONVENTIONS.md §28.
"""

from __future__ import annotations

import struct

from pydantic import Field

from ..errors import GuidanceError
from ..plan import StepTable
from .base import AbsoluteSchedule


def _float32(x: float) -> float:
    """x rounded to float32, as the pipeline compares it with its float32 timestep."""
    return struct.unpack("f", struct.pack("f", x))[0]


class Experts(AbsoluteSchedule):
    """w on the first expert's steps, scale_2 on the second expert's."""

    name = "experts"
    paper = "Wan 2.2 (diffusers WanPipeline: guidance_scale, guidance_scale_2, boundary_ratio)"
    summary = "w while t_i ≥ boundary·T (first expert), scale_2 after it (second expert)"

    scale_2: float = Field(..., allow_inf_nan=False, description="the second expert's w (diffusers' guidance_scale_2)")
    boundary: float | None = Field(None, ge=0.0, le=1.0, description="boundary_ratio; None: the pipeline's own")

    def scales(self, w: float, steps: StepTable) -> list[float]:
        if self.boundary is not None:
            boundary = self.boundary * steps.num_train_timesteps
        elif steps.boundary is not None:
            boundary = steps.boundary
        else:
            raise GuidanceError("The schedule 'experts' needs the step where the pipeline switches experts, and this "
                                "pipeline runs one denoiser (no transformer_2 and boundary_ratio). Give `boundary` "
                                "(a ratio of the training timesteps) or use another schedule.")
        boundary = _float32(boundary)
        return [w if t >= boundary else self.scale_2 for t in steps.timesteps]
