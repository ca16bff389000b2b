"""The perturbation each reference brings to the denoiser (none for uncond and icg)."""

from __future__ import annotations

from typing import Any

from guidance.references.base import Reference

from .attention import IdentityAttention
from .base import Perturbation, RowDispatch, RowScope
from .blocks import SkippedBlocks
from .time_embedding import TimeEmbedding


def perturbation_for(reference: Reference, adapter: Any, scope: RowScope) -> Perturbation | None:
    """The perturbation of `reference` on this adapter's denoiser, or None when it changes only conditions."""
    if reference.perturbs_time_embedding:
        return TimeEmbedding(reference, adapter, scope)
    kind = getattr(reference, "perturbation", "")
    if kind == "identity_attention":
        return IdentityAttention(reference, adapter, scope)
    if kind == "skipped_blocks":
        return SkippedBlocks(reference, adapter, scope)
    return None


__all__ = ["Perturbation", "RowDispatch", "RowScope", "perturbation_for"]
