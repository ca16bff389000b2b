"""`apg`: adaptive projected guidance on the denoised estimate x̂0.

Sadat, Hilliges, Weber, "Eliminating Oversaturation and Artifacts of High Guidance Scales in Diffusion
Models", ICLR 2025 (arXiv 2410.02416), Algorithm 1 / Eqs. 8–13, per sample on D = x̂0:
  Δ = D_c − D_u;  m ← Δ + β·m, Δ ← m  (reverse momentum for β < 0);  Δ ← Δ·min(1, r/‖Δ‖);
  Δ∥ = ⟨Δ, ĉ⟩·ĉ with ĉ = D_c/‖D_c‖, Δ⊥ = Δ − Δ∥;  D̂ = D_c + (w − 1)·(Δ⊥ + η·Δ∥).
η = 1, r = ∞, β = 0 is CFG at w. Defaults are the paper's SD-XL setting (η = 0, r = 15, β = −0.5); r
depends on the data scale, so tune it per model (the presets do). The momentum buffer advances once per
guided denoiser evaluation and resets at the start of every pipeline call (docs/CONVENTIONS.md §8).
"""

from __future__ import annotations

import torch
from pydantic import Field, PrivateAttr

from ..spaces import per_sample_dot, per_sample_norm
from .base import Rule, RuleStep


class APG(Rule):
    """Projected, norm-clipped guidance with reverse momentum."""

    name = "apg"
    paper = "Sadat, Hilliges & Weber, ICLR 2025 (arXiv 2410.02416)"
    summary = "D_c + (w − 1)·(Δ⊥ + η·Δ∥) on x̂0, Δ clipped to norm r with momentum β"
    space = "x0"

    eta: float = Field(0.0, allow_inf_nan=False)
    norm_threshold: float | None = Field(15.0, gt=0)
    momentum: float = Field(-0.5, allow_inf_nan=False)

    _running: torch.Tensor | None = PrivateAttr(None)

    def reset(self) -> None:
        self._running = None

    def _with_momentum(self, delta: torch.Tensor, step: RuleStep) -> torch.Tensor:
        if self.momentum == 0.0:
            return delta
        if self._running is None:
            self._running = delta.new_zeros((step.batch_size, *delta.shape[1:]))
        running = delta + self.momentum * self._running[step.samples]
        self._running[step.samples] = running
        return running

    def combine(self, c: torch.Tensor, u: torch.Tensor, w: float, step: RuleStep) -> torch.Tensor:
        delta = self._with_momentum(c - u, step)
        if self.norm_threshold is not None and self.norm_threshold != float("inf"):
            norm = per_sample_norm(delta)
            delta = delta * torch.clamp(self.norm_threshold / norm.clamp_min(1e-20), max=1.0)
        unit = c / per_sample_norm(c).clamp_min(1e-12)
        parallel = per_sample_dot(delta, unit) * unit
        orthogonal = delta - parallel
        return c + (w - 1.0) * (orthogonal + self.eta * parallel)
