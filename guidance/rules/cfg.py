"""`cfg`: classifier-free guidance, D̂ = u + w·(c − u).

Ho & Salimans, "Classifier-Free Diffusion Guidance", NeurIPS 2021 workshop (arXiv 2207.12598), Eq. 6,
written in diffusers' convention (w = 1 is conditional only). The optional `rescale` of the guidance spec
(Lin et al., arXiv 2305.08891, §3.4) applies to every rule, in guidance/step.py.
"""

from __future__ import annotations

import torch

from .base import Rule, RuleStep


class CFG(Rule):
    """Plain classifier-free guidance."""

    name = "cfg"
    paper = "Ho & Salimans, 2021 (arXiv 2207.12598)"
    summary = "u + w·(c − u)"

    def combine(self, c: torch.Tensor, u: torch.Tensor, w: float, step: RuleStep) -> torch.Tensor:
        return u + w * (c - u)
