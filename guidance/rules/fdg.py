"""`fdg`: frequency-decoupled guidance, CFG with its own scale for the low and the high frequencies.

Sadat, Vontobel, Salehi, Weber, "Guidance in the Frequency Domain Enables High-Fidelity Sampling at Low CFG
Scales", 2025 (arXiv 2506.19713), its FDG update (Algorithm 2 as diffusers' guider cites it): the conditional
and reference predictions are split by a Laplacian pyramid of `levels` levels, ψ(D) = (band₀, …, band_{L−2},
coarse), each level is guided with its own scale and the pyramid is collapsed again:
  Δ_l = ψ_l(D_c) − ψ_l(D_u);  Δ_l ← Δ_l⊥ + η·Δ_l∥ (APG's projection on ψ_l(D_c), per sample);
  ψ_l(D̂) = ψ_l(D_c) + (w_l − 1)·Δ_l;  D̂ = ψ⁻¹(ψ(D̂)),
with w_l = `scale` (the high-frequency w) on every band-pass level and `low_scale` on the coarse one. The paper's
SD-XL setting (its Table 8, as diffusers' guider documents it) is w_high = 10, w_low = 5 on two levels;
η = 1 (the default) is no projection.
The pyramid is the paper's (and kornia's, which diffusers uses): a 5 × 5 binomial blur with reflected borders,
bilinear halving (floor) and doubling. Each upsampling goes to the exact size of the finer level, so any height
and width work and ψ⁻¹(ψ(D)) = D exactly.
A schedule scales both bands' w − 1 by the same factor f_i (w_l,i = 1 + (w_l − 1)·f_i); a step at w = 1 is
conditional only (docs/CONVENTIONS.md §4).

Space: the paper writes the update on the denoiser's output D = x̂0 (as APG). Without projection the rule is
linear and ψ exactly invertible, so it gives the same result in every space and equals diffusers'
FrequencyDecoupledGuidance on the raw prediction. With η < 1 the projection is taken on x̂0 here, where diffusers
projects the raw prediction (ε, velocity); diffusers also writes the projected update as u + w·Δ (its default
formulation) instead of the paper's D_c + (w − 1)·Δ, which differs by (1 − η)·Δ∥ as in its APG. And diffusers'
pyramid (kornia's) pads a grid unless one side is a power of two and both are divisible by 2^(levels − 1), and
does not crop the result back, so its output has the wrong shape there (e.g. SD-XL's 1216 × 832 latents); this
pyramid needs no padding. A level at scale 1 (low_scale 1) keeps D_c's level here, where diffusers' guider
appends the previous level's.
FDG needs an image grid: a (batch, channels, height, width) prediction at least 3·2^(levels − 2) on each side.
Unverified: the paper's full text was not available when this was written; the update follows diffusers' guider
(which cites the paper's Algorithm 2), and the x̂0 space and the D_c + (w − 1)·Δ form of the projected update are
this project's reading (as in APG, by the same authors). Without projection (η = 1, the default) neither matters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import GuidanceError
from ..spaces import per_sample_dot, per_sample_norm
from .base import Rule, RuleStep

_TAPS = (1.0, 4.0, 6.0, 4.0, 1.0)  # the binomial 5-tap filter of the Laplacian pyramid, normalised below


def _blur(x: torch.Tensor) -> torch.Tensor:
    taps = torch.tensor(_TAPS, dtype=x.dtype, device=x.device) / 16.0
    kernel = torch.outer(taps, taps).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(_blur(x), size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False)


def _up(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return _blur(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The band-pass levels, finest first, then the coarse (Gaussian) level: `levels` tensors."""
    gaussians = [x]
    for _ in range(levels - 1):
        gaussians.append(_down(gaussians[-1]))
    bands = [fine - _up(coarse, fine.shape[-2:]) for fine, coarse in zip(gaussians, gaussians[1:], strict=False)]
    return bands + [gaussians[-1]]


def collapse(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """The inverse of `laplacian_pyramid`."""
    image = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        image = band + _up(image, band.shape[-2:])
    return image


class FDG(Rule):
    """Laplacian-pyramid CFG: `scale` on the high frequencies, `low_scale` on the low ones."""

    name = "fdg"
    paper = "Sadat et al., 2025 (arXiv 2506.19713)"
    summary = "CFG per Laplacian-pyramid level on x̂0: w on the bands, low_scale on the coarse level, APG's η"
    space = "x0"
    default_scale = 10.0

    low_scale: float = Field(5.0, ge=0.0, allow_inf_nan=False)
    levels: int = Field(2, ge=2, le=8)
    eta: float = Field(1.0, allow_inf_nan=False)

    def check_scale(self, scale: float) -> None:
        super().check_scale(scale)
        if scale == 1.0 and self.low_scale != 1.0:
            raise GuidanceError(
                f"fdg with scale 1 is conditional only (a step at w = 1 evaluates no reference), so its low_scale "
                f"{self.low_scale!r} would never act. Set `scale` (the high-frequency w) above 1, e.g. 10 with "
                "low_scale 5 (the paper's SD-XL setting), or use cfg at the low scale."
            )

    def _check_grid(self, x: torch.Tensor) -> None:
        smallest = 3 * 2 ** (self.levels - 2)
        if x.ndim != 4 or min(x.shape[-2:]) < smallest:
            raise GuidanceError(
                f"fdg splits a (batch, channels, height, width) prediction into a Laplacian pyramid of {self.levels} "
                f"levels, which needs height and width of at least {smallest}; this pipeline's prediction has shape "
                f"{tuple(x.shape)}. Use fewer levels, or another rule (cfg, apg, tcfg) for packed token sequences "
                "(Flux, Qwen-Image, …) and video latents."
            )

    def combine(self, c: torch.Tensor, u: torch.Tensor, w: float, step: RuleStep) -> torch.Tensor:
        self._check_grid(c)
        base = step.scale if step.scale is not None else w
        factor = 1.0 if base == 1.0 else (w - 1.0) / (base - 1.0)
        scales = [w] * (self.levels - 1) + [1.0 + (self.low_scale - 1.0) * factor]
        guided = []
        for level_c, level_u, scale in zip(laplacian_pyramid(c, self.levels), laplacian_pyramid(u, self.levels),
                                           scales, strict=True):
            delta = level_c - level_u
            if self.eta != 1.0:
                unit = level_c / per_sample_norm(level_c).clamp_min(1e-12)
                parallel = per_sample_dot(delta, unit) * unit
                delta = delta - (1.0 - self.eta) * parallel
            guided.append(level_c + (scale - 1.0) * delta)
        return collapse(guided)
