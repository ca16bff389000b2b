"""Flux: true CFG runs the conditional and the negative prompt as two separate transformer calls per step (the
separate-calls protocol, adapters/separate.py). ICG and TSG build their reference rows from the conditional call
itself, so they need no negative prompt. Flux's `guidance_scale` stays the distilled-guidance input;
`true_cfg_scale` is switched on by guidance.run (docs/CONVENTIONS.md §17).
"""

from __future__ import annotations

import torch
from torch import nn

from .true_cfg import TrueCFGAdapter


class FluxLayout:
    """What Flux, Chroma and FLUX.2 share: a transformer on packed latent tokens whose position ids are not cut to
    rows, time/1000, and double-stream blocks followed by single-stream blocks (slg/stg index them in that order)."""

    denoiser_attr = "transformer"
    skip_keys = frozenset({"img_ids", "txt_ids"})
    timestep_scale = 1000.0
    joint_blocks = True
    block_lists = ("transformer_blocks", "single_transformer_blocks")


class FluxAdapter(FluxLayout, TrueCFGAdapter):
    embedding_fields = (("encoder_hidden_states",), ("pooled_projections",))
    # ComfyUI's SkipLayerGuidanceDiT defaults for Flux (double blocks 7, 8, 9 and single blocks 7, 8, 9), indexed into
    # the double blocks then the single blocks of Flux.1's 19 + 38
    skip_layers = (7, 8, 9, 26, 27, 28)

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_text_embed.timestep_embedder]

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.pipe._execution_device, num_images_per_prompt=1,
            max_sequence_length=like["encoder_hidden_states"].shape[1])
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
