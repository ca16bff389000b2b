"""Tiny random-weight Z-Image pipeline and its call arguments. The transformer configuration is diffusers' own test's
(tests/pipelines/z_image/test_z_image.py: width 32, two main layers, one refiner layer each, 2 heads, rotary axes
8/4/4), over the tiny 4-channel VAE's 8 x 8 latents and the shared text width; built without text encoder (called with
caption features, a list of per-sample tensors of different lengths, as Qwen3's masked states are).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

from .components import TEXT_DIM, TEXT_SEQ_LEN, finish, image, small_vae

NEGATIVE_LEN = 3  # caption tokens of a negative prompt: shorter than the prompts', as an empty prompt's are


def tiny_zimage(seed: int = 0) -> ZImagePipeline:
    """Tiny ZImagePipeline; flow-matching Euler at shift 3 (our choice)."""
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=TEXT_DIM, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[8, 4, 4], axes_lens=[256, 32, 32])
    with torch.no_grad():  # created with torch.empty (diffusers' test fixes them the same way)
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=small_vae(), text_encoder=None,
                          tokenizer=None, transformer=transformer)
    return finish(pipe)


def zimage_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    """Caption features of different lengths per prompt (TEXT_SEQ_LEN − i) and shorter negatives. `scale` is diffusers'
    w; the pipeline's guidance_scale is w − 1 (it combines as pos + g·(pos − neg))."""
    prompts = [torch.randn(TEXT_SEQ_LEN - i % 3, TEXT_DIM, generator=rng) for i in range(batch)]
    negatives = [torch.randn(NEGATIVE_LEN, TEXT_DIM, generator=rng) for _ in range(batch)]
    return image() | {"prompt_embeds": prompts, "negative_prompt_embeds": negatives, "guidance_scale": scale - 1.0}


BUILDERS: dict[str, Any] = {"zimage": tiny_zimage}
CALL_ARGUMENTS: dict[str, Any] = {"zimage": zimage_arguments}
