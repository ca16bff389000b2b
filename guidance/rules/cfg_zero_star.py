"""`cfg_zero_star`: CFG-Zero* for flow-matching models (optimised scale + zero-init).

Fan et al., "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models", 2025
(arXiv 2503.18886), Eq. 7 and Algorithm 1, on the denoiser's raw output (velocity for flow models):
  s* = ⟨v_c, v_u⟩/(‖v_u‖² + 1e-8) per sample;  v̂ = s*·v_u + w·(v_c − s*·v_u);
the first `zero_init_steps` steps output 0 (the paper suggests ~4 % of the steps; its reference code
zeroes the first step). Zero-init steps evaluate no denoiser rows (docs/CONVENTIONS.md §6).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..spaces import per_sample_dot
from .base import Rule, RuleStep


class CFGZeroStar(Rule):
    """Optimised-scale CFG with zero-initialised first steps."""

    name = "cfg_zero_star"
    paper = "Fan et al., 2025 (arXiv 2503.18886)"
    summary = "s*·u + w·(c − s*·u), s* = ⟨c,u⟩/‖u‖²; first steps output 0"
    default_scale = 4.0

    zero_init_steps: int = Field(1, ge=0)

    def outputs_zero(self, index: int) -> bool:
        return index < self.zero_init_steps

    def combine(self, c: torch.Tensor, u: torch.Tensor, w: float, step: RuleStep) -> torch.Tensor:
        s_star = (per_sample_dot(c, u) / (per_sample_dot(u, u) + 1e-8)).to(u.dtype)
        scaled = s_star * u
        return scaled + w * (c - scaled)
