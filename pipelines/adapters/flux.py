"""Flux: true CFG runs the conditional and the negative prompt as two separate transformer calls per step (the
separate-calls protocol, adapters/separate.py). ICG and TSG build their reference rows from the conditional call
itself, so they need no negative prompt. Flux's `guidance_scale` stays the distilled-guidance input;
`true_cfg_scale` is switched on by guidance.run (docs/CONVENTIONS.md §17).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from guidance.attention import NAGNorm
from guidance.errors import GuidanceError

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

    # NAG: the official Flux processor's L2 norm and α; the negative text stream carries the negative pooled text and
    # the conditional rows' time and distilled guidance
    nag_norm = NAGNorm(p=2)
    nag_alpha = 0.25
    nag_text_fields = (("encoder_hidden_states",), ("pooled_projections",))
    nag_copied_fields = (("timestep",), ("guidance",))

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_text_embed.timestep_embedder]

    def nag_layers(self, denoiser: nn.Module) -> list[tuple[nn.Module, str]]:
        return ([(block.attn, "joint") for block in denoiser.transformer_blocks]
                + [(block.attn, "single") for block in denoiser.single_transformer_blocks])

    def nag_single_blocks(self, denoiser: nn.Module) -> list[nn.Module]:
        return list(denoiser.single_transformer_blocks)

    def nag_image_norms(self, denoiser: nn.Module) -> list[nn.Module]:
        return [*(block.norm1 for block in denoiser.transformer_blocks), denoiser.norm_out]

    def nag_encode(self, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The call's negative embeddings, or its negative prompt ("" if none) through the pipeline's encode_prompt."""
        embeds, pooled = kwargs.get("negative_prompt_embeds"), kwargs.get("negative_pooled_prompt_embeds")
        if embeds is None or pooled is None:
            if getattr(self.pipe, "text_encoder", None) is None:
                raise GuidanceError(f"NAG on {type(self.pipe).__name__} without text encoders needs the negative "
                                    "prompt as negative_prompt_embeds and negative_pooled_prompt_embeds.")
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=kwargs.get("negative_prompt") or "", prompt_2=kwargs.get("negative_prompt_2"),
                device=self.pipe._execution_device, num_images_per_prompt=kwargs.get("num_images_per_prompt", 1),
                max_sequence_length=kwargs.get("max_sequence_length", 512))
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.pipe._execution_device, num_images_per_prompt=1,
            max_sequence_length=like["encoder_hidden_states"].shape[1])
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
