"""`tcfg`: tangential damping classifier-free guidance.

Kwon et al., "TCFG: Tangential Damping Classifier-free Guidance", CVPR 2025 (arXiv 2503.18137), the
tangential damping of the unconditional score by SVD filtering, per sample: stack the two predictions as the
rows of A = [c; u] (2 × d), take its SVD A = U·Σ·Vᵀ, keep only the leading right singular vector v₁ (the
"normal" direction; the second is the tangential part the unconditional prediction does not share with the
conditional one) and damp u to its projection on it,
  u' = ⟨u, v₁⟩·v₁;  D̂ = u' + w·(c − u').
The right singular vectors lie in span{c, u}: v₁ = Aᵀe₁/σ₁ with e₁ the leading eigenvector of the 2 × 2 Gram
matrix AAᵀ = [[‖c‖², ⟨c,u⟩], [⟨c,u⟩, ‖u‖²]] and σ₁² its eigenvalue, so u' = (⟨u, Aᵀe₁⟩/σ₁²)·Aᵀe₁ is computed from
three per-sample dot products in float64, without a d-dimensional SVD (the same v₁; tests/test_tcfg_fdg.py checks
both against numpy's SVD and diffusers' TangentialClassifierFreeGuidance). When c and u are orthogonal with equal
norms (or both 0) no direction leads: u is kept and the step is CFG.

Space: the paper's "scores" are the network's noise prediction (the score is −ε/s: a factor common to both rows,
which leaves v₁ unchanged), so the rule acts on the raw output, as diffusers' guider does; on flow models (SD3 in
the paper's experiments) that is the velocity the network outputs, also as in diffusers and ComfyUI's node (the
paper gives no conversion for velocity models; ComfyUI projects ε on VP v-prediction models, this rule v).
Unverified: the paper's full text was not available when this was written; the rule follows diffusers' guider
(which cites it) and ComfyUI's node, and the statements above about the paper come from them.
"""

from __future__ import annotations

import torch

from ..spaces import per_sample_dot
from .base import Rule, RuleStep


class TCFG(Rule):
    """CFG whose reference is damped to the leading singular direction of [c; u]."""

    name = "tcfg"
    paper = "Kwon et al., CVPR 2025 (arXiv 2503.18137)"
    summary = "u' + w·(c − u'), u' = u projected on the leading right singular vector of [c; u]"

    def combine(self, c: torch.Tensor, u: torch.Tensor, w: float, step: RuleStep) -> torch.Tensor:
        p, q, r = (per_sample_dot(x, y).double() for x, y in ((c, c), (c, u), (u, u)))
        half = (p - r) / 2
        root = torch.sqrt(half**2 + q**2)
        top = (p + r) / 2 + root  # σ₁², the larger eigenvalue of AAᵀ
        # its eigenvector (e_c, e_u), from whichever row of AAᵀ − σ₁²·I is better conditioned
        e_c = torch.where(half >= 0, half + root, q)
        e_u = torch.where(half >= 0, q, root - half)
        norm = torch.sqrt(e_c**2 + e_u**2)
        leading = norm > 0
        e_c, e_u = torch.where(leading, e_c / norm, 0.0), torch.where(leading, e_u / norm, 1.0)
        k = torch.where(leading, (e_c * q + e_u * r) / torch.where(leading, top, 1.0), 1.0)
        wide = torch.float64 if c.dtype == torch.float64 else torch.float32
        damped = ((k * e_c).to(wide) * c.to(wide) + (k * e_u).to(wide) * u.to(wide)).to(c.dtype)
        return damped + w * (c - damped)
