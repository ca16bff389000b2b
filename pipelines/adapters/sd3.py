"""Stable Diffusion 3: MMDiT on a doubled [uncond; cond] batch, rectified flow, pooled text projections.

The time embedding is `transformer.time_text_embed.timestep_embedder` (the pooled text is added after it).
"""

from __future__ import annotations

import torch
from torch import nn

from .doubled import DoubledBatchAdapter


class SD3Adapter(DoubledBatchAdapter):
    denoiser_attr = "transformer"
    embedding_fields = (("encoder_hidden_states",), ("pooled_projections",))
    pag_layers = ("blocks.1",)  # diffusers' StableDiffusion3PAGPipeline default (it also matches blocks 10–19)
    joint_blocks = True
    block_lists = ("transformer_blocks",)
    skip_layers = (7, 8, 9)  # SD3.5 Medium's skip-layer guidance (diffusers, Stability AI's sd3_infer.py)

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_text_embed.timestep_embedder]

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip_tokens = 77
        length = like["encoder_hidden_states"].shape[1] - clip_tokens
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.pipe._execution_device,
            num_images_per_prompt=1, do_classifier_free_guidance=False, max_sequence_length=max(length, 1))
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
