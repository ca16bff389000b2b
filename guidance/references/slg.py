"""`slg`: skip-layer guidance — contrast with the conditional prediction of a network that skips blocks `layers`.

Stable Diffusion 3.5's skip-layer guidance (diffusers' StableDiffusion3Pipeline, `skip_guidance_layers`): the listed
blocks of the main block list are not run for the perturbed rows (both streams pass through), and
D̂ = u + w·(c − u) + s·(c − ĉ) on a window of steps. SD3's defaults — layers [7, 8, 9], s = 2.8, steps 0.01–0.2 —
are `terms: [{reference: {name: slg, layers: [7, 8, 9]}, scale: 2.8, schedule: {name: steps}}]`. `layers` None
takes the family's default. Conventions: docs/CONVENTIONS.md §20, §21, §24, §27.
"""

from __future__ import annotations

from pydantic import Field

from .base import PerturbedReference


class SLG(PerturbedReference):
    """Skipped blocks of the main block list."""

    name = "slg"
    paper = "Stable Diffusion 3.5 skip-layer guidance (diffusers StableDiffusion3Pipeline)"
    summary = "reference rows skip blocks `layers` (block indices)"
    perturbation = "skipped_blocks"
    layer_kind = "blocks"
    default_term_scale = 2.8

    layers: list[int] | None = Field(None, min_length=1)
