"""`uncond`: the classic CFG reference — the null condition, negative prompt or null class.

Ho & Salimans, "Classifier-Free Diffusion Guidance" (arXiv 2207.12598): u = D(x_t, t, ∅). The reference
rows are the pipeline's own unconditional (or negative-prompt) rows, untouched.
"""

from __future__ import annotations

from .base import Reference


class Uncond(Reference):
    """The pipeline's own null / negative condition."""

    name = "uncond"
    paper = "Ho & Salimans, 2021 (arXiv 2207.12598)"
    summary = "null condition, negative prompt or null class"
