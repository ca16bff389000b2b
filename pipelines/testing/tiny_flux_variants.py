"""Tiny random-weight pipelines of the Flux variants and their relatives: Flux Kontext, FLUX.2 (dev and Klein),
Chroma and Lumina Image 2.0. Built without text encoders (called with embeddings), from the configuration facts of
diffusers' own tests (tests/pipelines/<family>/), sized like the other tiny pipelines: 16-pixel images, latents at
half that size, 4 steps in well under a second on a CPU.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from diffusers import (
    AutoencoderKLFlux2,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    FluxKontextPipeline,
    FluxTransformer2DModel,
    Lumina2Pipeline,
    Lumina2Transformer2DModel,
)

from .components import IMAGE_SIZE, LATENT_SIZE, TEXT_DIM, TEXT_SEQ_LEN, embeds, finish, image, small_vae

# Flux.1's scheduler settings (dynamic shifting), shared by Kontext and Chroma.
_FLUX_SCHEDULER: dict[str, Any] = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                                   "base_image_seq_len": 256, "max_image_seq_len": 4096}
# One double and one single block over 4 latent channels packed in 2 x 2 patches (diffusers' Flux-family tests).
_FLUX_BLOCKS: dict[str, Any] = {"patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 1,
                                "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": TEXT_DIM}


def tiny_flux_kontext(seed: int = 0) -> FluxKontextPipeline:
    """Tiny Flux Kontext pipeline (Flux.1 with an input image's tokens appended to the sequence)."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**_FLUX_BLOCKS, pooled_projection_dim=TEXT_DIM, guidance_embeds=False,
                                         axes_dims_rope=(4, 4, 8))
    pipe = FluxKontextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER),
                               vae=small_vae(shift_factor=0.0), text_encoder=None, tokenizer=None,
                               text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    return finish(pipe)


def _flux2_parts(guidance_embeds: bool) -> dict[str, Any]:
    transformer = Flux2Transformer2DModel(**_FLUX_BLOCKS, timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=guidance_embeds)
    # At random initialisation FLUX.2's text values barely reach the image tokens (two prompts change the prediction
    # by ~1 % of the other tiny pipelines' difference); ten times larger text value projections restore a usable
    # contrast between the branches, which the per-sample AG checks need.
    with torch.no_grad():
        for block in transformer.transformer_blocks:
            block.attn.add_v_proj.weight.mul_(10.0)
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                             sample_size=2 * LATENT_SIZE, use_quant_conv=False, use_post_quant_conv=False)
    return {"transformer": transformer, "vae": vae, "scheduler": FlowMatchEulerDiscreteScheduler(),
            "text_encoder": None, "tokenizer": None}


def tiny_flux2(seed: int = 0) -> Flux2Pipeline:
    """Tiny FLUX.2 [dev] pipeline: guidance-distilled (a guidance embedding, no negative call)."""
    torch.manual_seed(seed)
    return finish(Flux2Pipeline(**_flux2_parts(guidance_embeds=True)))


def tiny_flux2_klein(seed: int = 0, is_distilled: bool = False) -> Flux2KleinPipeline:
    """Tiny FLUX.2 [klein] pipeline: CFG as separate calls, or none when `is_distilled`."""
    torch.manual_seed(seed)
    return finish(Flux2KleinPipeline(**_flux2_parts(guidance_embeds=False), is_distilled=is_distilled))


def tiny_chroma(seed: int = 0) -> ChromaPipeline:
    """Tiny Chroma pipeline (a pruned Flux with a modulation approximator, CFG as separate calls)."""
    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(**_FLUX_BLOCKS, axes_dims_rope=(4, 4, 8), approximator_hidden_dim=32,
                                           approximator_layers=1, approximator_num_channels=16)
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER),
                          vae=small_vae(shift_factor=0.0), text_encoder=None, tokenizer=None, transformer=transformer)
    return finish(pipe)


def tiny_lumina2(seed: int = 0) -> Lumina2Pipeline:
    """Tiny Lumina Image 2.0 pipeline (reversed time, negated output, normalised CFG); two query heads share one
    key/value head as in the real model's grouped attention."""
    torch.manual_seed(seed)
    transformer = Lumina2Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_attention_heads=2,
        num_kv_heads=1, multiple_of=16, norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=(4, 2, 2),
        cap_feat_dim=TEXT_DIM)
    pipe = Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=small_vae(),
                           text_encoder=None, tokenizer=None)
    return finish(pipe)


def _negative_pair(batch: int, rng: torch.Generator) -> dict[str, Any]:
    return {"prompt_embeds": embeds(batch, rng), "negative_prompt_embeds": embeds(batch, rng)}


def flux_kontext_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    """Flux's arguments plus an input image given as latents (4 channels, 8 x 8: 16 tokens after the generated 16);
    `max_area` keeps the 16-pixel size (its default scales the image to a megapixel)."""
    return image() | _negative_pair(batch, rng) | {
        "pooled_prompt_embeds": torch.randn(batch, TEXT_DIM, generator=rng),
        "negative_pooled_prompt_embeds": torch.randn(batch, TEXT_DIM, generator=rng),
        "image": torch.randn(batch, 4, LATENT_SIZE, LATENT_SIZE, generator=rng), "max_area": IMAGE_SIZE**2,
        "true_cfg_scale": scale,
    }


def flux2_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    """FLUX.2 [dev]: the prompt only; `scale` is its distilled-guidance input."""
    return image() | {"prompt_embeds": embeds(batch, rng), "guidance_scale": scale}


def flux2_klein_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    return image() | _negative_pair(batch, rng) | {"guidance_scale": scale}


def masked_arguments(batch: int, rng: torch.Generator, scale: float, seed: int,
                     dtype: torch.dtype = torch.long, size: int = IMAGE_SIZE) -> dict[str, Any]:
    """Chroma (a float mask) and Lumina 2 (integer; its VAE factor is fixed at 8, so 64 pixels for 8 x 8 latents):
    embeddings with their text masks (a padded tail, as a real tokenizer gives)."""
    mask = torch.ones(batch, TEXT_SEQ_LEN, dtype=dtype)
    mask[:, TEXT_SEQ_LEN - 2:] = 0
    return image(size) | _negative_pair(batch, rng) | {
        "prompt_attention_mask": mask, "negative_prompt_attention_mask": mask.clone(), "guidance_scale": scale}


# family → builder, and family → call arguments (merged into tiny.BUILDERS and tiny.CALL_ARGUMENTS)
BUILDERS: dict[str, Any] = {
    "flux_kontext": tiny_flux_kontext,
    "flux2_klein": tiny_flux2_klein,
    "chroma": tiny_chroma,
    "lumina2": tiny_lumina2,
    "flux2": tiny_flux2,
    "flux2_klein_distilled": partial(tiny_flux2_klein, is_distilled=True),
}
CALL_ARGUMENTS: dict[str, Any] = {
    "flux_kontext": flux_kontext_arguments,
    "flux2_klein": flux2_klein_arguments,
    "chroma": partial(masked_arguments, dtype=torch.float32),
    "lumina2": partial(masked_arguments, size=4 * IMAGE_SIZE),
    "flux2": flux2_arguments,
    "flux2_klein_distilled": flux2_klein_arguments,
}
