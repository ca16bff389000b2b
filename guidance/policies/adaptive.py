"""`adaptive`: Adaptive Guidance (AG) — stop evaluating the reference once the branches agree.

Castillo et al., "Adaptive Guidance: Training-free Acceleration of Conditional Diffusion Models", AAAI 2025
(arXiv 2312.12487), §4: γ_t = cos(x̂0_c, x̂0_u) per sample; CFG while γ_t ≤ γ̄; the step where γ_t > γ̄ first
happens is still guided; every later step of that sample is conditional only and its reference rows are not
computed. The paper states the cosine on the network outputs; this project computes it on x̂0 (the
scheduler's own estimate), because an ε-cosine is ≈ 1 from the first step (ε_c ≈ ε_u at high noise) and would
switch guidance off at once. Deciding costs one host–device synchronisation per guided step until every
sample has switched. The paper sweeps γ̄ ∈ {0.991, 0.994, 0.996}; the default 0.99 is a little earlier.
Conventions: docs/CONVENTIONS.md §5, §16.
"""

from __future__ import annotations

import torch
from pydantic import Field, PrivateAttr

from ..plan import StepTable
from .base import Policy


class Adaptive(Policy):
    """Per-sample switch to conditional-only sampling once cos(x̂0_c, x̂0_u) > threshold."""

    name = "adaptive"
    paper = "Castillo et al., AAAI 2025 (arXiv 2312.12487)"
    summary = "CFG until cos(x̂0_c, x̂0_u) > threshold, then conditional only"

    uses_cosine = True

    threshold: float = Field(0.99, gt=-1.0, le=1.0)

    _switched: list[bool] = PrivateAttr(default_factory=list)

    def reset(self, batch_size: int, steps: StepTable) -> None:
        self._switched = [False] * batch_size

    def reference_samples(self, index: int) -> list[int]:
        return [b for b, done in enumerate(self._switched) if not done]

    def observe(self, index: int, samples: list[int], c: torch.Tensor, u: torch.Tensor | None,
                cosine: torch.Tensor | None) -> None:
        if cosine is None:
            return
        for b, gamma in zip(samples, cosine.tolist(), strict=True):
            if gamma > self.threshold:
                self._switched[b] = True
