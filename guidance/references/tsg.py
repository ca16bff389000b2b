"""`tsg`: time-step guidance — contrast against the same input with a perturbed time embedding.

Sadat, Kansy, Hilliges, Weber, "No Training, No Problem: Rethinking Classifier-Free Guidance for Diffusion
Models", ICLR 2025 (arXiv 2407.02687), §5 and Algorithm 2: t̃_emb = t_emb + s·t^α·n, n ~ N(0, I),
D̂ = D(x_t, t̃_emb, y) + w·(D(x_t, t_emb, y) − D(x_t, t̃_emb, y)). t = timestep / num_train_timesteps ∈ [0, 1];
n is drawn afresh at every step. Only the time embedding of the reference rows changes: text, pooled-text and
class embeddings added to it stay untouched. Works for unconditional models.
Defaults s = 1, α = 1: the paper chooses s and α to match the scale of the model's time embedding and
ablates them per model rather than fixing one value; tune them for yours.
Conventions: docs/CONVENTIONS.md §14.
"""

from __future__ import annotations

import torch
from pydantic import Field

from .base import SeededReference


class TSG(SeededReference):
    """Perturbed time embedding in the reference rows."""

    name = "tsg"
    from_condition = True
    perturbs_time_embedding = True
    paper = "Sadat, Kansy, Hilliges & Weber, ICLR 2025 (arXiv 2407.02687)"
    summary = "reference rows see the time embedding plus s·t^α·n"

    s: float = Field(1.0, ge=0, allow_inf_nan=False)
    alpha: float = Field(1.0, ge=0, allow_inf_nan=False)

    def time_noise(self, shape: torch.Size, t: float) -> torch.Tensor:
        """s·t^α·n for one denoiser call (float32, CPU)."""
        return self.s * (t**self.alpha) * torch.randn(shape, generator=self._generator)
