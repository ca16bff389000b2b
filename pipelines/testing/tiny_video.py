"""Tiny random-weight video pipelines (LTX-Video, HunyuanVideo, CogVideoX, AnimateDiff) and their call arguments.

The configuration facts are diffusers' own test suite's (tests/pipelines/<family>/test_<family>.py), shrunk where
a 4-step CPU call allows. The transformer pipelines are built without text encoders (call them with embeddings);
AnimateDiff keeps the tiny CLIP text encoder of the image families (for ICG's prompt source) but is called with
random embeddings too.

Latent layouts the pipelines hand their denoisers: LTX packed tokens (batch, frames·height·width, channels);
HunyuanVideo and AnimateDiff (batch, channels, frames, height, width); CogVideoX (batch, frames, channels, height,
width), frames before channels.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AnimateDiffPipeline,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    MotionAdapter,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel

from .components import (
    IMAGE_SIZE,
    LATENT_SIZE,
    SD_SCHEDULER_CONFIG,
    TEXT_DIM,
    TEXT_SEQ_LEN,
    embeds,
    finish,
    image,
    small_vae,
    text_config,
    tiny_tokenizer,
)

POOLED_DIM = 8  # HunyuanVideo's pooled (CLIP) projection width in diffusers' test configuration


def tiny_ltx(seed: int = 0) -> LTXPipeline:
    """Tiny LTX-Video pipeline (packed video tokens, flow matching with a resolution-dependent shift), no VAE or text
    encoder: the pipeline's default compression ratios (32 spatial, 8 temporal) give a 2 x 2 x 2 latent grid."""
    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=2, caption_channels=TEXT_DIM)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)
    pipe = LTXPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)
    return finish(pipe)


def tiny_hunyuanvideo(seed: int = 0) -> HunyuanVideoPipeline:
    """Tiny HunyuanVideo pipeline (guidance-distilled dual/single-stream transformer, flow matching), no VAE or text
    encoders: the default compression ratios (8 spatial, 4 temporal) give latents (B, 4, 2, 2, 2)."""
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True, text_embed_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM, rope_axes_dim=(2, 4, 4))
    pipe = HunyuanVideoPipeline(transformer=transformer, vae=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    return finish(pipe)


def tiny_cogvideox(seed: int = 0) -> CogVideoXPipeline:
    """Tiny CogVideoX pipeline (v-prediction, CogVideoX's DDIM with its SNR shift), no VAE or text encoder: the
    default compression ratios (8 spatial, 4 temporal) give latents (B, 2, 4, 2, 2), frames before channels."""
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=TEXT_DIM, num_layers=2, sample_width=2, sample_height=2, sample_frames=5, patch_size=1,
        temporal_compression_ratio=4, max_text_seq_length=TEXT_SEQ_LEN)
    scheduler = CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing")
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer, scheduler=scheduler)
    return finish(pipe)


def tiny_animatediff(seed: int = 0) -> AnimateDiffPipeline:
    """Tiny AnimateDiff pipeline: an SD-1.x UNet with a motion adapter (UNetMotionModel: frames folded into the batch
    inside the UNet), CLIP text encoder, DDIM."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2, cross_attention_dim=TEXT_DIM)
    adapter = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=8,
                            motion_num_attention_heads=2)
    tokenizer = tiny_tokenizer()
    pipe = AnimateDiffPipeline(vae=small_vae(), text_encoder=CLIPTextModel(text_config(tokenizer)), tokenizer=tokenizer,
                               unet=unet, motion_adapter=adapter, scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
                               feature_extractor=None, image_encoder=None)
    return finish(pipe)


def _video(size: int, frames: int) -> dict[str, Any]:
    return image(size) | {"num_frames": frames}


def ltx_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    mask = torch.ones(batch, TEXT_SEQ_LEN, dtype=torch.long)
    mask[:, TEXT_SEQ_LEN // 2:] = 0  # padded tail, as a real T5 prompt has
    return _video(64, 9) | {
        "prompt_embeds": embeds(batch, rng), "prompt_attention_mask": mask,
        "negative_prompt_embeds": embeds(batch, rng), "negative_prompt_attention_mask": mask.clone(),
        "guidance_scale": scale}


def hunyuanvideo_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    mask = torch.ones(batch, TEXT_SEQ_LEN, dtype=torch.long)
    return _video(2 * IMAGE_SIZE, 5) | {
        "prompt_embeds": embeds(batch, rng), "pooled_prompt_embeds": torch.randn(batch, POOLED_DIM, generator=rng),
        "prompt_attention_mask": mask, "negative_prompt_embeds": embeds(batch, rng),
        "negative_pooled_prompt_embeds": torch.randn(batch, POOLED_DIM, generator=rng),
        "negative_prompt_attention_mask": mask.clone(), "true_cfg_scale": scale}


def cogvideox_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    return _video(2 * IMAGE_SIZE, 5) | {"prompt_embeds": embeds(batch, rng),
                                        "negative_prompt_embeds": embeds(batch, rng), "guidance_scale": scale}


def animatediff_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    return image() | {"prompt_embeds": embeds(batch, rng), "negative_prompt_embeds": embeds(batch, rng),
                      "num_frames": 2, "guidance_scale": scale}


# family → builder, and family → call arguments (merged into tiny.BUILDERS and tiny.CALL_ARGUMENTS)
BUILDERS: dict[str, Any] = {"ltx": tiny_ltx, "hunyuanvideo": tiny_hunyuanvideo, "cogvideox": tiny_cogvideox,
                            "animatediff": tiny_animatediff}
CALL_ARGUMENTS: dict[str, Any] = {"ltx": ltx_arguments, "hunyuanvideo": hunyuanvideo_arguments,
                                  "cogvideox": cogvideox_arguments, "animatediff": animatediff_arguments}
