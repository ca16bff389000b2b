"""Tiny random-weight pipelines of the long tail: diffusers pipelines beyond the main families that reuse a family's
denoiser (img2img, inpainting, upscalers, ControlNet, T2I-Adapter, PAG variants, InstructPix2Pix, DeepFloyd IF,
Kandinsky 2.2, …). Each reuses the tiny family's components where the pipeline takes them; the extra components'
configuration facts are diffusers' own test suite's (tests/pipelines/<name>/).

`LONG_TAIL` maps a pipeline label (its class name, plus the call setting where one class is tried twice) to its
builder and its call arguments. The arguments hold everything but the CFG strength (`guidance_scale`, or
`true_cfg_scale` where `native` says so), which the test sets for the pipeline's own CFG and guidance.run sets itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import diffusers
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    FluxControlNetModel,
    FluxTransformer2DModel,
    T2IAdapter,
    UNet2DConditionModel,
    VQModel,
)

from .components import IMAGE_SIZE, LATENT_SIZE, SD_SCHEDULER_CONFIG, TEXT_DIM, embeds, finish
from .tiny import tiny_flux, tiny_pixart, tiny_sd, tiny_sd3, tiny_sdxl

BATCH = 2
STEPS = 3


@dataclass(frozen=True)
class LongTail:
    """One long-tail pipeline: `build()` the tiny pipeline, `kwargs()` its call arguments without the CFG strength;
    `native` is the argument that switches and sets the pipeline's own CFG."""

    build: Callable[[], DiffusionPipeline]
    kwargs: Callable[[], dict[str, Any]]
    native: str = "guidance_scale"


def reuse(cls: type, pipe: DiffusionPipeline, **components: Any) -> DiffusionPipeline:
    """A `cls` pipeline over `pipe`'s components (those `cls` takes), with `components` added or replaced."""
    accepted = inspect.signature(cls.__init__).parameters
    taken = {k: v for k, v in pipe.components.items() if k in accepted}
    if "requires_safety_checker" in accepted:
        taken["requires_safety_checker"] = False
    return finish(cls(**{**taken, **components}))


def _sd_unet(in_channels: int = 4, **overrides: Any) -> UNet2DConditionModel:
    """The tiny SD UNet (tiny_sd's layout) with another input width or extra settings."""
    torch.manual_seed(0)
    settings = {"sample_size": LATENT_SIZE, "in_channels": in_channels, "out_channels": 4,
                "block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8,
                "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "attention_head_dim": 2,
                "cross_attention_dim": TEXT_DIM}
    return UNet2DConditionModel(**{**settings, **overrides})


def _sd_controlnet() -> ControlNetModel:
    torch.manual_seed(1)
    return ControlNetModel(block_out_channels=(16, 32), layers_per_block=1, in_channels=4,
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=TEXT_DIM,
                           conditioning_embedding_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=2)


def _rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _pixels(channels: int = 3, size: int = IMAGE_SIZE, seed: int = 2) -> torch.Tensor:
    return torch.rand(BATCH, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _common() -> dict[str, Any]:
    return {"num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(0)}


def _prompts() -> dict[str, Any]:
    return _common() | {"prompt": ["cat", "dog"], "negative_prompt": ["blurry"] * BATCH, "output_type": "latent"}


def _sized_prompts() -> dict[str, Any]:
    return _prompts() | {"height": IMAGE_SIZE, "width": IMAGE_SIZE}


def _image_to_image() -> dict[str, Any]:
    return _prompts() | {"image": _pixels(), "strength": 0.7, "num_inference_steps": 4}


def _inpainting() -> dict[str, Any]:
    return _sized_prompts() | {"image": _pixels(), "mask_image": _pixels(1, seed=3).round(), "strength": 1.0}


def _pooled() -> dict[str, Any]:
    rng = _rng()
    return _common() | {
        "prompt_embeds": embeds(BATCH, rng), "pooled_prompt_embeds": torch.randn(BATCH, TEXT_DIM, generator=rng),
        "negative_prompt_embeds": embeds(BATCH, rng),
        "negative_pooled_prompt_embeds": torch.randn(BATCH, TEXT_DIM, generator=rng), "output_type": "latent"}


def _embedded() -> dict[str, Any]:
    rng = _rng()
    return _common() | {"prompt_embeds": embeds(BATCH, rng), "negative_prompt_embeds": embeds(BATCH, rng),
                        "output_type": "latent"}


# ---------------------------------------------------------------- Stable Diffusion 1.x/2.x variants


def sd_inpaint() -> DiffusionPipeline:
    """SD inpainting: a 9-channel UNet input (latents, mask, masked-image latents), 4 output channels."""
    return reuse(diffusers.StableDiffusionInpaintPipeline, tiny_sd(), unet=_sd_unet(9))


def sd_upscale() -> DiffusionPipeline:
    """The x4 upscaler: a 7-channel UNet input (latents and the low-resolution image), the noise level as class
    label; its VAE decodes at the latents' size ×2 here (the real one ×4)."""
    sd = tiny_sd()
    unet = _sd_unet(7, class_embed_type=None, num_class_embeds=100)
    return reuse(diffusers.StableDiffusionUpscalePipeline, sd, unet=unet,
                 low_res_scheduler=DDPMScheduler(), scheduler=DDIMScheduler(prediction_type="v_prediction"),
                 watermarker=None, max_noise_level=350)


def sd_depth2img() -> DiffusionPipeline:
    """Depth-to-image: a 5-channel UNet input (latents and the depth map); called with a depth map, so no depth
    estimator."""
    return reuse(diffusers.StableDiffusionDepth2ImgPipeline, tiny_sd(), unet=_sd_unet(5), depth_estimator=None,
                 feature_extractor=None)


def sd_controlnet(cls: type = diffusers.StableDiffusionControlNetPipeline) -> Callable[[], DiffusionPipeline]:
    return lambda: reuse(cls, tiny_sd(), controlnet=_sd_controlnet())


def sd_adapter() -> DiffusionPipeline:
    """T2I-Adapter: residuals at the UNet's two down levels (8 × 8 and 4 × 4)."""
    torch.manual_seed(1)
    adapter = T2IAdapter(in_channels=3, channels=[16, 32], num_res_blocks=1, downscale_factor=2,
                         adapter_type="full_adapter")
    return reuse(diffusers.StableDiffusionAdapterPipeline, tiny_sd(), adapter=adapter)


def sd_pix2pix() -> DiffusionPipeline:
    """InstructPix2Pix: an 8-channel UNet input (latents and the image latents), three batch parts."""
    return reuse(diffusers.StableDiffusionInstructPix2PixPipeline, tiny_sd(), unet=_sd_unet(8))


def _sd_as(cls: type) -> Callable[[], DiffusionPipeline]:
    return lambda: reuse(cls, tiny_sd())


# ---------------------------------------------------------------- SDXL, SD3, Flux, PixArt variants


def _sdxl_as(cls: type, **components: Any) -> Callable[[], DiffusionPipeline]:
    return lambda: reuse(cls, tiny_sdxl(), **components)


def _sd3_as(cls: type) -> Callable[[], DiffusionPipeline]:
    return lambda: reuse(cls, tiny_sd3())


def _flux_as(cls: type, **components: Any) -> Callable[[], DiffusionPipeline]:
    return lambda: reuse(cls, tiny_flux(), **components)


def flux_fill() -> DiffusionPipeline:
    """Flux Fill: the packed latents (16 channels), the masked-image latents (16) and the packed mask (4 · 2²) in,
    16 out; distilled guidance only (no true CFG)."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=48, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8))
    return reuse(diffusers.FluxFillPipeline, tiny_flux(), transformer=transformer)


def flux_controlnet() -> DiffusionPipeline:
    torch.manual_seed(1)
    controlnet = FluxControlNetModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, axes_dims_rope=(4, 4, 8))
    return reuse(diffusers.FluxControlNetPipeline, tiny_flux(), controlnet=controlnet)


def _flux_kwargs(**extra: Any) -> Callable[[], dict[str, Any]]:
    def kwargs() -> dict[str, Any]:
        args = _pooled() | {"height": IMAGE_SIZE, "width": IMAGE_SIZE} | extra
        return {k: v() if callable(v) else v for k, v in args.items()}
    return kwargs


def _flux_fill_kwargs() -> dict[str, Any]:
    """Flux Fill takes no negative prompt."""
    kwargs = _flux_kwargs(image=_pixels, mask_image=lambda: _pixels(1, seed=3).round())()
    return {k: v for k, v in kwargs.items() if not k.startswith("negative")}


def _pixart_kwargs() -> dict[str, Any]:
    rng = _rng()
    mask = torch.ones(BATCH, 8, dtype=torch.long)
    return _common() | {"prompt_embeds": embeds(BATCH, rng), "prompt_attention_mask": mask, "negative_prompt": None,
                        "negative_prompt_embeds": embeds(BATCH, rng), "negative_prompt_attention_mask": mask,
                        "height": IMAGE_SIZE, "width": IMAGE_SIZE, "use_resolution_binning": False,
                        "output_type": "latent"}


# ---------------------------------------------------------------- DeepFloyd IF stage I, Kandinsky 2.2


def if_stage1() -> DiffusionPipeline:
    """DeepFloyd IF's stage I: pixels in (3 channels), noise and a learned variance out (3 + 3)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE, layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), in_channels=3, out_channels=6,
        cross_attention_dim=TEXT_DIM, encoder_hid_dim=TEXT_DIM, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
        act_fn="gelu")
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", thresholding=True, dynamic_thresholding_ratio=0.95,
                              sample_max_value=1.0, variance_type="learned_range")
    return finish(diffusers.IFPipeline(tokenizer=None, text_encoder=None, unet=unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, watermarker=None,
                                       requires_safety_checker=False))


def _if_kwargs() -> dict[str, Any]:
    return _embedded() | {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "output_type": "pt"}


def _movq() -> VQModel:
    torch.manual_seed(0)
    return VQModel(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                   in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
                   num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
                   vq_embed_dim=4)


def kandinsky22(hint: bool = False) -> Callable[[], DiffusionPipeline]:
    """Kandinsky 2.2's decoder: image-embedding conditioned UNet, 4 latent channels in, noise and variance out
    (4 + 4). With `hint` (its ControlNet) the UNet's config says 8 input channels, but the hint goes through
    added_cond_kwargs: the sample still has 4."""

    def build() -> DiffusionPipeline:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            in_channels=8 if hint else 4, out_channels=8, addition_embed_type="image_hint" if hint else "image",
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(16, 32), layers_per_block=1,
            norm_num_groups=8, encoder_hid_dim=TEXT_DIM, encoder_hid_dim_type="image_proj",
            cross_attention_dim=TEXT_DIM, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
            class_embed_type=None)
        scheduler = DDIMScheduler(**{**SD_SCHEDULER_CONFIG, "beta_schedule": "linear"})
        cls = diffusers.KandinskyV22ControlnetPipeline if hint else diffusers.KandinskyV22Pipeline
        return finish(cls(unet=unet, scheduler=scheduler, movq=_movq()))

    return build


def _kandinsky_kwargs(hint: bool = False) -> Callable[[], dict[str, Any]]:
    def kwargs() -> dict[str, Any]:
        rng = _rng()
        args = _common() | {"image_embeds": torch.randn(BATCH, TEXT_DIM, generator=rng),
                            "negative_image_embeds": torch.randn(BATCH, TEXT_DIM, generator=rng),
                            "height": IMAGE_SIZE, "width": IMAGE_SIZE, "output_type": "latent"}
        if hint:  # its hint block downsamples 8×; it has no latent output
            args |= {"hint": _pixels(size=8 * LATENT_SIZE), "output_type": "pt"}
        return args
    return kwargs


# ---------------------------------------------------------------- transformers of no supported family


def aura_flow() -> DiffusionPipeline:
    torch.manual_seed(0)
    transformer = diffusers.AuraFlowTransformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=TEXT_DIM,
        out_channels=4, pos_embed_max_size=64)
    return finish(diffusers.AuraFlowPipeline(tokenizer=None, text_encoder=None, vae=tiny_sd().vae,
                                             transformer=transformer,
                                             scheduler=diffusers.FlowMatchEulerDiscreteScheduler()))


LONG_TAIL: dict[str, LongTail] = {
    "StableDiffusionImg2ImgPipeline": LongTail(_sd_as(diffusers.StableDiffusionImg2ImgPipeline), _image_to_image),
    "StableDiffusionInpaintPipeline": LongTail(sd_inpaint, _inpainting),
    "StableDiffusionUpscalePipeline": LongTail(
        sd_upscale, lambda: _prompts() | {"image": _pixels(size=LATENT_SIZE), "noise_level": 20}),
    "StableDiffusionDepth2ImgPipeline": LongTail(
        sd_depth2img, lambda: _image_to_image() | {"depth_map": _pixels(1)[:, 0]}),
    "StableDiffusionControlNetPipeline": LongTail(sd_controlnet(), lambda: _sized_prompts() | {"image": _pixels()}),
    "StableDiffusionControlNetImg2ImgPipeline": LongTail(
        sd_controlnet(diffusers.StableDiffusionControlNetImg2ImgPipeline),
        lambda: _image_to_image() | {"control_image": _pixels(seed=4)}),
    "StableDiffusionAdapterPipeline": LongTail(sd_adapter, lambda: _sized_prompts() | {"image": _pixels()}),
    "StableDiffusionPAGPipeline": LongTail(_sd_as(diffusers.StableDiffusionPAGPipeline), _sized_prompts),
    "StableDiffusionPAGPipeline (pag_scale=0)": LongTail(
        _sd_as(diffusers.StableDiffusionPAGPipeline), lambda: _sized_prompts() | {"pag_scale": 0.0}),
    "StableDiffusionInstructPix2PixPipeline": LongTail(sd_pix2pix, lambda: _prompts() | {"image": _pixels()}),
    "StableDiffusionPanoramaPipeline": LongTail(
        _sd_as(diffusers.StableDiffusionPanoramaPipeline),
        lambda: _prompts() | {"height": IMAGE_SIZE, "width": 2 * IMAGE_SIZE}),
    "StableDiffusionAttendAndExcitePipeline": LongTail(
        _sd_as(diffusers.StableDiffusionAttendAndExcitePipeline),
        lambda: _sized_prompts() | {"prompt": "a cat and a dog", "negative_prompt": None, "token_indices": [2, 5],
                                  "attn_res": (LATENT_SIZE, LATENT_SIZE)}),
    "StableDiffusionXLImg2ImgPipeline": LongTail(
        _sdxl_as(diffusers.StableDiffusionXLImg2ImgPipeline, requires_aesthetics_score=False), _image_to_image),
    "StableDiffusionXLInpaintPipeline": LongTail(
        _sdxl_as(diffusers.StableDiffusionXLInpaintPipeline, requires_aesthetics_score=False), _inpainting),
    "StableDiffusionXLPAGPipeline": LongTail(_sdxl_as(diffusers.StableDiffusionXLPAGPipeline), _sized_prompts),
    "StableDiffusion3Img2ImgPipeline": LongTail(
        _sd3_as(diffusers.StableDiffusion3Img2ImgPipeline),
        lambda: _pooled() | {"image": _pixels(), "strength": 0.7, "num_inference_steps": 4}),
    "FluxImg2ImgPipeline": LongTail(
        _flux_as(diffusers.FluxImg2ImgPipeline), _flux_kwargs(image=_pixels, strength=0.7, num_inference_steps=4),
        native="true_cfg_scale"),
    "FluxInpaintPipeline": LongTail(
        _flux_as(diffusers.FluxInpaintPipeline),
        _flux_kwargs(image=_pixels, mask_image=lambda: _pixels(1, seed=3).round(), strength=1.0),
        native="true_cfg_scale"),
    "FluxControlNetPipeline": LongTail(flux_controlnet, _flux_kwargs(control_image=_pixels), native="true_cfg_scale"),
    "FluxFillPipeline": LongTail(flux_fill, _flux_fill_kwargs),
    "PixArtSigmaPAGPipeline": LongTail(
        lambda: reuse(diffusers.PixArtSigmaPAGPipeline, tiny_pixart(sigma=True)), _pixart_kwargs),
    "IFPipeline": LongTail(if_stage1, _if_kwargs),
    "KandinskyV22Pipeline": LongTail(kandinsky22(), _kandinsky_kwargs()),
    "KandinskyV22ControlnetPipeline": LongTail(kandinsky22(hint=True), _kandinsky_kwargs(hint=True)),
    "AuraFlowPipeline": LongTail(aura_flow, lambda: _embedded() | {"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
}
