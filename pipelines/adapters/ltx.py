"""LTX-Video (LTXPipeline, diffusers pipelines/ltx/pipeline_ltx.py): a video DiT on packed latent tokens (batch,
frames·height·width, channels), flow matching, one transformer call per step on the doubled batch [uncond; cond] with
the scheduler's timestep (0–1000). The pipeline combines `u + s·(c − u)` in float32 and applies `guidance_rescale`
(the spec's `rescale`) after it; nothing else follows before its scheduler step.

The time embedding is `transformer.time_embed.emb.timestep_embedder`; the main block list is
`transformer.transformer_blocks` (slg, stg in residual mode). Its attention modules are LTX's own, not diffusers'
`Attention`, so pag, seg and stg's attention mode have nothing they can perturb.
"""

from __future__ import annotations

from torch import nn

from .doubled import DoubledBatchAdapter


class LTXAdapter(DoubledBatchAdapter):
    denoiser_attr = "transformer"
    block_lists = ("transformer_blocks",)
    skip_layers = (19,)  # LTX-Video's own inference configs (Lightricks/LTX-Video, ltxv-2b: skip_block_list [19])
    attention_refusal = ("its LTXAttention modules have no identity path here. Use slg or stg with mode residual "
                         "(skipped blocks), tsg, or autoguidance.")

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_embed.emb.timestep_embedder]
