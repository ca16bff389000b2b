"""Chroma (ChromaPipeline, pipelines/chroma/pipeline_chroma.py): a pruned Flux.1 (19 double and 38 single blocks) on
packed latent tokens, flow matching (timestep/1000), no pooled text and no guidance input. Its CFG runs the prompt and
the negative prompt as two separate transformer calls per step, switched on by `guidance_scale` > 1, and combines them
with `neg + s·(cond − neg)`, nothing after. Each call carries its own text attention mask (batch-sized, it follows the
rows). Chroma has no learned time embedder: its sinusoidal time projection (`time_text_embed.time_proj`) feeds the
modulation approximator, and TSG perturbs that projection.
"""

from __future__ import annotations

from torch import nn

from .flux import FluxLayout
from .separate import SeparateCallsAdapter


class ChromaAdapter(FluxLayout, SeparateCallsAdapter):
    # our choice: Flux's defaults (ComfyUI's double and single blocks 7, 8, 9), as Chroma keeps Flux.1's 19 + 38 blocks
    skip_layers = (7, 8, 9, 26, 27, 28)

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_text_embed.time_proj]
