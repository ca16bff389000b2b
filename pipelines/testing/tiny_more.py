"""Tiny builders and call arguments of the further families: Wan 2.2 (two experts), Wan image-to-video, Sana,
HiDream-I1 and Kolors. Each follows diffusers' own test configuration of the pipeline (tests/pipelines/<family>),
without text encoders where the pipeline takes prompt embeddings."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

from .components import finish, wan_transformer, wan_vae


def tiny_wan22(seed: int = 0) -> WanPipeline:
    """Tiny Wan 2.2 text-to-video pipeline with two experts (diffusers' tests/pipelines/wan/test_wan_22.py):
    `transformer` on the steps with t ≥ 875 (the A14B models' boundary_ratio 0.875), `transformer_2` below. With
    4 or 5 steps at shift 7 both experts run."""
    torch.manual_seed(seed)
    vae, transformer, transformer_2 = wan_vae(), wan_transformer(), wan_transformer()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       transformer_2=transformer_2, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                       boundary_ratio=0.875)
    return finish(pipe)

