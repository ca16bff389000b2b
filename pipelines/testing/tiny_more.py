"""Tiny builders and call arguments of the further families: Wan 2.2 (two experts), Wan image-to-video, Sana,
HiDream-I1 and Kolors. Each follows diffusers' own test configuration of the pipeline (tests/pipelines/<family>),
without text encoders where the pipeline takes prompt embeddings."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKLWan,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
    KolorsPipeline,
    SanaPipeline,
    SanaTransformer2DModel,
    UNet2DConditionModel,
    WanImageToVideoPipeline,
    WanPipeline,
)
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from .components import (
    IMAGE_SIZE,
    LATENT_SIZE,
    TEXT_DIM,
    TEXT_SEQ_LEN,
    embeds,
    finish,
    image,
    small_vae,
    wan_transformer,
    wan_vae,
)

IMAGE_EMBED_DIM = 4  # the image encoder's width in diffusers' Wan 2.1 I2V test
HIDREAM_LLAMA_DIM = 16  # the Llama-3 states' width in diffusers' HiDream test
WAN_TEXT_LEN = 512  # Wan's attention splits image from text context as "all but the last 512 tokens"


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



def tiny_wan_i2v(seed: int = 0, two_experts: bool = False) -> WanImageToVideoPipeline:
    """Tiny Wan 2.1 image-to-video pipeline (diffusers' tests/pipelines/wan/test_wan_image_to_video.py, its CLIP
    image encoder at 8 x 8 pixels) without text encoder: call it with prompt embeddings. The transformer sees 36
    channels (16 noisy latents, a 4-channel frame mask, the 16-channel encoded image) and predicts 16.
    `two_experts`: Wan 2.2 I2V-A14B's layout instead (no image encoder, two experts, boundary_ratio 0.9)."""
    torch.manual_seed(seed)
    vae = wan_vae()
    if two_experts:
        experts = {"transformer": wan_transformer(in_channels=36), "transformer_2": wan_transformer(in_channels=36),
                   "boundary_ratio": 0.9}
    else:
        vision = CLIPVisionConfig(hidden_size=IMAGE_EMBED_DIM, projection_dim=IMAGE_EMBED_DIM, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=8, intermediate_size=16, patch_size=1)
        experts = {"transformer": wan_transformer(in_channels=36, image_dim=IMAGE_EMBED_DIM),
                   "image_encoder": CLIPVisionModelWithProjection(vision),
                   "image_processor": CLIPImageProcessor(crop_size=8, size=8)}
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), **experts)
    return finish(pipe)


def wan_i2v_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    """A random first frame and prompt embeddings of the 512 tokens Wan's image cross-attention assumes."""
    pixels = (torch.rand(IMAGE_SIZE, IMAGE_SIZE, 3, generator=rng) * 255).to(torch.uint8).numpy()
    text = {key: torch.randn(batch, WAN_TEXT_LEN, TEXT_DIM, generator=rng)
            for key in ("prompt_embeds", "negative_prompt_embeds")}
    return image() | text | {"image": Image.fromarray(pixels), "num_frames": 5, "guidance_scale": scale}


def tiny_wan22_5b(seed: int = 0, image_to_video: bool = False) -> WanPipeline | WanImageToVideoPipeline:
    """Tiny Wan 2.2 TI2V-5B layout (diffusers' tests/pipelines/wan/test_wan_22_image_to_video.py, its 5B case): one
    transformer on 48 channels, the 48-channel VAE with 16× spatial compression and `expand_timesteps` — one time
    per token, the conditioning first frame's tokens at time 0 for image-to-video. Flow-matching Euler at the 5B
    model's shift 5 (its checkpoint ships UniPC)."""
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                           latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True])
    parts = {"tokenizer": None, "text_encoder": None, "vae": vae, "transformer": wan_transformer(in_channels=48,
             out_channels=48), "scheduler": FlowMatchEulerDiscreteScheduler(shift=5.0), "expand_timesteps": True}
    if image_to_video:
        return finish(WanImageToVideoPipeline(**parts, image_encoder=None, image_processor=None))
    return finish(WanPipeline(**parts))


def wan22_5b_arguments(batch: int, rng: torch.Generator, scale: float, seed: int,
                       image_to_video: bool = False) -> dict[str, Any]:
    """32 x 64 pixels and 9 frames: a 3-frame latent video of 2 x 4 latents, 2 tokens per frame; a random first frame
    for image-to-video."""
    arguments = {"height": 32, "width": 64, "output_type": "latent", "prompt_embeds": embeds(batch, rng),
                 "negative_prompt_embeds": embeds(batch, rng), "num_frames": 9, "guidance_scale": scale}
    if image_to_video:
        pixels = (torch.rand(32, 64, 3, generator=rng) * 255).to(torch.uint8).numpy()
        arguments["image"] = Image.fromarray(pixels)
    return arguments


def tiny_sana(seed: int = 0) -> SanaPipeline:
    """Tiny Sana pipeline (diffusers' tests/pipelines/sana/test_sana.py, two blocks, flow-matching Euler at shift 7)
    without text encoder: call it with embeddings and masks. The checkpoints ship DPM-Solver++ on flow sigmas
    instead; tests/test_more_families.py runs Sana with that one too."""
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=TEXT_DIM,
        sample_size=LATENT_SIZE)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1], downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407)
    return finish(SanaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                               scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0)))



def tiny_kolors(seed: int = 0) -> KolorsPipeline:
    """Tiny Kolors pipeline (diffusers' tests/pipelines/kolors/test_kolors.py UNet and Euler scheduler) without its
    ChatGLM text encoder: call it with prompt and pooled embeddings. As in Kolors' checkpoint the UNet projects the
    text states first (`encoder_hid_dim_type` text_proj, here 32 → 8)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=2, sample_size=LATENT_SIZE, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM, cross_attention_dim=8, norm_num_groups=1,
        encoder_hid_dim_type="text_proj", encoder_hid_dim=TEXT_DIM)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    return finish(KolorsPipeline(vae=small_vae(), text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler))


def tiny_hidream(seed: int = 0) -> HiDreamImagePipeline:
    """Tiny HiDream-I1 pipeline (diffusers' tests/pipelines/hidream_image/test_pipeline_hidream.py transformer: one
    double- and one single-stream block, 4 routed experts; flow-matching Euler at HiDream-I1-Full's shift 3) without
    its four text encoders: call it with T5, Llama-3 and pooled embeddings."""
    torch.manual_seed(seed)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_channels=[TEXT_DIM, HIDREAM_LLAMA_DIM], text_emb_dim=2 * TEXT_DIM,
        num_routed_experts=4, num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32),
        llama_layers=(0, 1))
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=small_vae(shift_factor=0.0), text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
        text_encoder_4=None, tokenizer_4=None, transformer=transformer)
    pipe.default_sample_size = LATENT_SIZE  # the pipeline rescales every request to this area (128² latents)
    return finish(pipe)


def hidream_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    """T5 states, two stacked Llama-3 layers (layer first) and two CLIP pooled embeddings, with negatives."""

    def llama() -> torch.Tensor:
        return torch.randn(2, batch, TEXT_SEQ_LEN, HIDREAM_LLAMA_DIM, generator=rng)

    return image() | {
        "prompt_embeds_t5": embeds(batch, rng), "negative_prompt_embeds_t5": embeds(batch, rng),
        "prompt_embeds_llama3": llama(), "negative_prompt_embeds_llama3": llama(),
        "pooled_prompt_embeds": torch.randn(batch, 2 * TEXT_DIM, generator=rng),
        "negative_pooled_prompt_embeds": torch.randn(batch, 2 * TEXT_DIM, generator=rng), "guidance_scale": scale}
