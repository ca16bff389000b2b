"""The perturbation each reference brings to the denoiser (none for uncond and icg)."""

from __future__ import annotations

from typing import Any

from guidance.references.base import Reference

from .attention import IdentityAttention
from .base import Perturbation, RowDispatch, RowScope
from .blocks import SkippedBlocks
from .network import WeakerNetwork
from .queries import BlurredQueries
from .time_embedding import TimeEmbedding

KINDS: dict[str, type[Perturbation]] = {"identity_attention": IdentityAttention, "skipped_blocks": SkippedBlocks,
                                        "blurred_queries": BlurredQueries, "weaker_network": WeakerNetwork}


def perturbation_for(reference: Reference, adapter: Any, scope: RowScope) -> Perturbation | None:
    """The perturbation of `reference` on this adapter's denoiser, or None when it changes only conditions."""
    if reference.perturbs_time_embedding:
        return TimeEmbedding(reference, adapter, scope)
    kind = KINDS.get(getattr(reference, "perturbation", ""))
    return None if kind is None else kind(reference, adapter, scope)


__all__ = ["Perturbation", "RowDispatch", "RowScope", "perturbation_for"]
