"""`pcg`: predictor-corrector guidance.

Bradley & Nakkiran, "Classifier-Free Guidance is a Predictor-Corrector", TMLR 2025 (arXiv 2408.09000), §4: a DDIM
predictor on the conditional model p(x | c), then K Langevin corrector steps at the new noise level on the
γ-powered distribution π_t ∝ p_t(x | c)^γ · p_t(x)^{1−γ}, whose score is the CFG combination at scale γ:
  ∇ log π_t(x) = −ε̂_γ / s,  ε̂_γ = ε̂_u + γ·(ε̂_c − ε̂_u)   (x_t = a·x0 + s·n),
  Langevin:      x ← x + δ·∇ log π_t(x) + sqrt(2δ)·z,  z ~ N(0, I).
The paper's theorem: in the SDE limit DDPM-CFG at w equals PCG with K = 1 and γ = 2w − 1 when the corrector's
step is half the predictor step's increment of σ² (σ = s/a): δ = (σ_i² − σ_j²)/2 in σ units.

Step size (docs/CONVENTIONS.md §32): after the predictor step from noise level i to j, every corrector iteration
takes δ = r · s_j² · (1 − σ_j²/σ_i²) / 2 in x_t units, r = `step_size`: the Langevin step whose noise is the
DDPM posterior noise of the step i → j (so its first-order expansion is the theorem's (σ_i² − σ_j²)/2 · a_j², and it
stays finite at the pure-noise first step where σ_i² − σ_j² is not). No corrector runs after the final step (σ = 0).
The paper's explicit algorithm (its Algorithm 2) parameterises the step for SDXL; its text could not be read here,
so the step is the theorem's, as above — marked as not yet checked against that algorithm.

The denoiser returns the CONDITIONAL prediction at every pipeline step (the predictor); the session runs the
corrector after the scheduler's step (pipelines/correcting.py), each iteration evaluating the conditional and
reference rows at the new level and combining them here with `combine` (CFG's rule at γ).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..spaces import to_x0
from .cfg import CFG


class PCG(CFG):
    """DDIM on p(x | c), corrected by Langevin dynamics on p_t(x | c)^γ p_t(x)^{1−γ}."""

    name = "pcg"
    paper = "Bradley & Nakkiran, TMLR 2025 (arXiv 2408.09000)"
    summary = "DDIM predictor on c, then K Langevin steps on p(x|c)^γ p(x)^(1−γ) (scale: γ)"
    default_scale = 3.0
    predictor_corrector = True
    guider_refusal = ("its corrector evaluates the denoiser again at the next noise level after each scheduler step, "
                      "and a guider only answers the loop's own denoiser calls")

    corrector_steps: int = Field(1, ge=0, le=100, description="K, Langevin steps after every predictor step")
    step_size: float = Field(1.0, gt=0.0, le=100.0, description="r, the Langevin step in units of the theorem's")

    def langevin_step(self, x: torch.Tensor, guided: torch.Tensor, noise: torch.Tensor, sigma_before: float,
                      a: float, s: float, prediction_type: str) -> torch.Tensor:
        """One corrector iteration at the level x_t = a·x0 + s·n (σ = s/a) reached from noise-to-signal
        `sigma_before`: `guided` is the denoiser's prediction combined at γ, `noise` a standard normal draw."""
        x32 = x if x.dtype == torch.float64 else x.float()
        x0 = to_x0(guided, x32, a, s, prediction_type)
        eps = (x32 - a * x0) / s
        ratio = (s / a) / sigma_before if sigma_before != float("inf") else 0.0
        delta = self.step_size * s * s * (1.0 - ratio * ratio) / 2.0
        return (x32 - (delta / s) * eps + (2.0 * delta) ** 0.5 * noise.to(x32.dtype)).to(x.dtype)
