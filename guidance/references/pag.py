"""`pag`: perturbed-attention guidance — contrast with the conditional prediction of a network whose self-attention
map is the identity in `layers`.

Ahn et al., "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance", ECCV 2024 (arXiv 2403.17377),
Eq. 12: D̂ = D_c + s·(D_c − D_ptb), the perturbed network replacing SA(Q, K, V) = softmax(QKᵀ/√d)V by V. With CFG
(diffusers' PAG pipelines): u + w·(c − u) + s·(c − ĉ) — `terms: [{reference: pag, scale: s}]`; alone,
`{scale: 1 + s, reference: pag}`. `layers` are diffusers' `pag_applied_layers` ids; None takes the family's
default (diffusers' PAG pipeline default where one exists). The term's default s is diffusers' pag_scale, 3.0.
Conventions: docs/CONVENTIONS.md §20–22.
"""

from __future__ import annotations

from pydantic import Field

from .base import PerturbedReference


class PAG(PerturbedReference):
    """Identity self-attention in the chosen layers."""

    name = "pag"
    paper = "Ahn et al., ECCV 2024 (arXiv 2403.17377)"
    summary = "reference rows see identity self-attention in `layers` (pag_applied_layers ids)"
    perturbation = "identity_attention"
    default_term_scale = 3.0

    layers: list[str] | None = Field(None, min_length=1)
