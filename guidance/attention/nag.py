"""`nag`: normalized attention guidance — a negative prompt inside the attention of the conditional pass.

Chen et al., "Normalized Attention Guidance: Universal Negative Guidance for Diffusion Models", 2025
(arXiv 2505.21179), §3, as the official code (github.com/ChenDarYen/Normalized-Attention-Guidance, its attention
processors per family) computes it. Z⁺ is the attention output of the conditional rows with the prompt, Z⁻ the same
queries' attention output with the negative prompt (in joint-attention families the negative text runs through the
blocks as a stream of its own); then, per token along the feature dim:

    Z̃ = φ·Z⁺ − (φ − 1)·Z⁻,   r = ‖Z̃‖ / ‖Z⁺‖,   Ẑ = Z̃·min(r, τ)/r,   Z = α·Ẑ + (1 − α)·Z⁺

with φ = `scale` (1 is off), τ = `tau`, α = `alpha`. Where the official code departs from the paper it is followed:
- the norm is per family (`NAGNorm`): L1 (the paper's) in the SD-XL, SD3 and Wan processors, L2 in the Flux one;
- SD3's processor adds 1e-7 to ‖Z⁺‖ and to r; Wan's rescales only tokens with r > τ, to ‖Z⁺‖·τ/(‖Z̃‖ + 1e-7), and
  reads 0/0 as r = 10;
- α defaults per family (SD-XL 0.5, SD3 0.125, Flux and Wan 0.25); τ 2.5 everywhere; φ has no default there (1,
  off): 5 is the official README's Flux example.
Which layers and rows, and how each family forms Z⁻, is the integration's (pipelines/nag.py, the adapters).
The official code computes in the model's dtype; here the norms and the blend run in float32 and the result is
cast back (an L1 norm over thousands of fp16 features overflows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import Field, field_validator

from .base import AttentionGuidance


@dataclass(frozen=True)
class NAGNorm:
    """How a family's official processor normalises: the norm's order `p`, the `epsilon` it adds to ‖Z⁺‖ and r
    (SD3: 1e-7), and `masked` (Wan: only tokens with r > τ are rescaled, to ‖Z⁺‖·τ/(‖Z̃‖ + 1e-7))."""

    p: int = 1
    epsilon: float = 0.0
    masked: bool = False


def normalized_attention(positive: torch.Tensor, negative: torch.Tensor, scale: float, tau: float, alpha: float,
                         norm: NAGNorm) -> torch.Tensor:
    """NAG's guided attention output from Z⁺ and Z⁻ (tokens × features in the last two dims). Written as two lerps
    and a per-token factor (the official expressions up to float rounding; a few passes over the features)."""
    pos = positive.float()
    guided = torch.lerp(negative.float(), pos, scale)  # φ·Z⁺ − (φ − 1)·Z⁻
    norm_pos = torch.linalg.vector_norm(pos, ord=norm.p, dim=-1, keepdim=True)
    norm_guided = torch.linalg.vector_norm(guided, ord=norm.p, dim=-1, keepdim=True)
    if norm.masked:
        ratio = torch.nan_to_num(norm_guided / norm_pos, nan=10.0)
        factor = torch.where(ratio > tau, norm_pos * tau / (norm_guided + 1e-7), 1.0)
    elif norm.epsilon:
        ratio = norm_guided / (norm_pos + norm.epsilon)
        factor = torch.clamp(ratio, max=tau) / (ratio + norm.epsilon)
    else:  # min(r, τ)/r, without its 0/0 where Z̃ = 0 (then Z̃·1 = 0 too)
        ratio = norm_guided / norm_pos
        factor = torch.where(ratio > tau, tau / ratio, 1.0)
    return torch.lerp(pos, guided * factor, alpha).to(positive.dtype)


class NAG(AttentionGuidance):
    """Normalized attention guidance in the text (cross- or joint-) attention of the conditional rows."""

    name = "nag"
    guider_refusal = ("it guides the attention of the conditional batch against the negative prompt's text, which "
                      "a guider's batches do not carry into the denoiser")
    paper = "Chen et al. 2025 (arXiv 2505.21179)"
    summary = ("negative prompt in attention: φ·Z⁺ − (φ−1)·Z⁻, norm ratio to Z⁺ clipped at tau, blended with Z⁺ by "
               "alpha; the pipeline's negative_prompt is Z⁻'s text")

    scale: float = Field(5.0, description="φ, the official nag_scale (1: off)")
    tau: float = Field(2.5, description="τ, the clip on ‖Z̃‖/‖Z⁺‖")
    alpha: float | None = Field(None, description="α, the blend with Z⁺; None: the family's official default")

    @field_validator("scale", "tau", "alpha", mode="before")
    @classmethod
    def _number(cls, value: object, info: object) -> object:
        name = info.field_name  # type: ignore[attr-defined]
        if value is None and name == "alpha":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, not {value!r}")
        value = float(value)
        if name == "scale" and value < 1.0:
            raise ValueError(f"scale is φ ≥ 1 (1 is off; the official code's nag_scale), not {value}")
        if name == "tau" and value <= 0.0:
            raise ValueError(f"tau is the clip on the norm ratio ‖Z̃‖/‖Z⁺‖, > 0 (official 2.5), not {value}")
        if name == "alpha" and not 0.0 <= value <= 1.0:
            raise ValueError(f"alpha is the blend weight in [0, 1] (official 0.125–0.5 by family), not {value}")
        return value

    @property
    def active(self) -> bool:
        return self.scale > 1.0
