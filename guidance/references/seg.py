"""`seg`: smoothed energy guidance — contrast with the conditional prediction of a network whose self-attention
queries are blurred by a Gaussian of `blur_sigma` over the token grid in `layers`.

Hong, "Smoothed Energy Guidance: Guiding Diffusion Models with Reduced Energy Curvature of Attention", NeurIPS 2024
(arXiv 2408.00760), as the official code (SusungHong/SEG-SDXL) computes it: the blurred attention energy lowers its
curvature; σ → ∞ is uniform attention (σ ≥ 9999: every query the mean query). With CFG:
u + w·(c − u) + s·(c − ĉ). Defaults are the official pipeline's: s = 3.0 (the term's default), blur_sigma = 9999999
(infinite blur; its README example uses 100), layers: the family's PAG default ("mid" on UNets, as the official
code). Conventions: docs/CONVENTIONS.md §20, §21, §23.
"""

from __future__ import annotations

from pydantic import Field

from .base import PerturbedReference


class SEG(PerturbedReference):
    """Blurred self-attention queries in the chosen layers."""

    name = "seg"
    paper = "Hong, NeurIPS 2024 (arXiv 2408.00760)"
    summary = "reference rows see self-attention queries blurred by a Gaussian of blur_sigma in `layers`"
    perturbation = "blurred_queries"
    default_term_scale = 3.0

    layers: list[str] | None = Field(None, min_length=1)
    blur_sigma: float = Field(9999999.0, gt=0, allow_inf_nan=False)
