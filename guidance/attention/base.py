"""Attention guidance: changes the conditional rows' attention inside the denoiser, in the same denoiser call (no
extra pass, no reference rows). The pipelines integration evaluates it where the family's adapter says its text
attention is."""

from __future__ import annotations

from ..strategy import Strategy


class AttentionGuidance(Strategy):
    """A method acting on the conditional rows' attention outputs."""

    @property
    def active(self) -> bool:
        """Whether it changes anything (False: the pipeline runs exactly as without it)."""
        return True
