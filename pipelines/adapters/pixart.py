"""PixArt-α / PixArt-Σ: DiT-style transformer on a doubled [uncond; cond] batch with learned sigma.

The time embedding is `transformer.adaln_single.emb.timestep_embedder`; only the first half of the output
channels is the prediction (the pipeline discards the variance half).
"""

from __future__ import annotations

import torch
from torch import nn

from .doubled import DoubledBatchAdapter


class PixArtAdapter(DoubledBatchAdapter):
    denoiser_attr = "transformer"
    pag_layers = ("blocks.1",)  # diffusers' PixArtSigmaPAGPipeline default (it also matches blocks 10–19)
    block_lists = ("transformer_blocks",)
    skip_layers = (14,)  # our choice: the middle of PixArt's 28 blocks (diffusers' PAG example uses block 14)

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.adaln_single.emb.timestep_embedder]

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, device=self.pipe._execution_device,
            max_sequence_length=like["encoder_hidden_states"].shape[1])
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}
