"""Wan 2.1 (WanPipeline, WanImageToVideoPipeline): a video DiT on 5-D latents (batch, channels, frames, height,
width), flow matching, with the prompt and the negative prompt as two separate transformer calls per step (the
separate-calls protocol). The time embedding is `transformer.condition_embedder.time_embedder`; the main block list
is `transformer.blocks` (slg, stg). Wan 2.2's second expert (`transformer_2`) is refused until both experts are
guided."""

from __future__ import annotations

from typing import Any

from torch import nn

from guidance.errors import GuidanceError

from .separate import SeparateCallsAdapter


class WanAdapter(SeparateCallsAdapter):
    denoiser_attr = "transformer"
    block_lists = ("blocks",)
    skip_layers = (2,)  # STG's Wan 2.1 block (junhahyung/STGuidance, skip_guidance_block_idxs)

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        if getattr(pipe, "transformer_2", None) is not None:
            raise GuidanceError(f"{type(pipe).__name__} carries a second expert (transformer_2, Wan 2.2), which "
                                "guidance does not wrap yet: only the first expert's steps would be guided. Load the "
                                "pipeline with transformer_2=None (Wan 2.1 style), or use the pipeline's own CFG.")

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.condition_embedder.time_embedder]
