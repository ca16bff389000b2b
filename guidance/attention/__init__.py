"""Attention guidance: guidance applied inside the denoiser's attention layers of the conditional pass (the fifth,
optional axis of a spec: `attention: {name: nag, ...}`)."""

from ..registry import Registry
from .base import AttentionGuidance
from .nag import NAG, NAGNorm, normalized_attention

ATTENTIONS: Registry[AttentionGuidance] = Registry("attention")
ATTENTIONS.register(NAG)

__all__ = ["ATTENTIONS", "NAG", "AttentionGuidance", "NAGNorm", "normalized_attention"]
