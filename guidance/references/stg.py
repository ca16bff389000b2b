"""`stg`: spatiotemporal skip guidance — contrast with the conditional prediction of a network that skips, in blocks
`layers`, the whole block (`mode: residual`, STG-R) or its self-attention map (`mode: attention`, STG-A: identity).

Hyung et al., "Spatiotemporal Skip Guidance for Enhanced Video Diffusion Sampling", CVPR 2025 (arXiv 2411.18664):
D̂ = u + w·(c − u) + s·(c − ĉ), for video transformers (and image DiTs). `layers` are block indices of the family's
main block list; None takes the family's default. Conventions: docs/CONVENTIONS.md §20, §21, §27.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import PerturbedReference


class STG(PerturbedReference):
    """Skipped blocks or identity self-attention in the chosen blocks."""

    name = "stg"
    paper = "Hyung et al., CVPR 2025 (arXiv 2411.18664)"
    summary = "reference rows skip blocks `layers` (residual) or their self-attention map (attention)"
    layer_kind = "blocks"
    default_term_scale = 1.0

    layers: list[int] | None = Field(None, min_length=1)
    mode: Literal["residual", "attention"] = "residual"

    @property
    def perturbation(self) -> str:  # type: ignore[override]
        return "skipped_blocks" if self.mode == "residual" else "identity_attention"
