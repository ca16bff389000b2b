"""HunyuanVideo (HunyuanVideoPipeline, diffusers pipelines/hunyuan_video/pipeline_hunyuan_video.py): a
guidance-distilled video DiT on 5-D latents (batch, channels, frames, height, width), flow matching. Its
`guidance_scale` is the distilled-guidance input (an embedding, `guidance` = scale·1000) and stays the caller's; its
real CFG is true CFG: with `true_cfg_scale` > 1 and a negative prompt (embeddings AND pooled embeddings) it runs the
prompt and the negative prompt as two separate transformer calls (timestep 0–1000) and combines them with
`neg + s·(cond − neg)`, nothing after it (the separate-calls protocol; guidance.run switches it on, as for Flux).

The time embedding is `transformer.time_text_embed.timestep_embedder` (the distilled-guidance and pooled-text
embeddings are added after it); the main block list is the dual-stream blocks, then the single-stream blocks, both
returning (hidden_states, encoder_hidden_states).
"""

from __future__ import annotations

from torch import nn

from .true_cfg import TrueCFGAdapter


class HunyuanVideoAdapter(TrueCFGAdapter):
    denoiser_attr = "transformer"
    embedding_fields = (("encoder_hidden_states",), ("pooled_projections",))
    joint_blocks = True
    hidden_states_first = True
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    skip_layers = (10,)  # our choice: the middle of HunyuanVideo's 20 dual-stream blocks
    attention_refusal = ("its attention runs the video and text tokens jointly with rotary embeddings and a text mask, "
                         "which the identity attention does not reproduce. Use slg or stg with mode residual (skipped "
                         "blocks), tsg, or autoguidance.")

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_text_embed.timestep_embedder]
