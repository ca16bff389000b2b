"""Tiny random-weight diffusers pipelines for fast, offline tests of guidance mechanics.

Every builder seeds torch (``torch.manual_seed(seed)``) and builds its components from configs, so two
builds with the same seed have identical weights. A 4-step call takes milliseconds on a CPU.
``tiny_call_kwargs`` returns matching, seed-deterministic call arguments for each family.

Family notes (diffusers 0.42):

- ``sd``/``sdxl``/``sd3``/``pixart`` build one CFG batch ``[uncond; cond]``; ``dit`` builds ``[cond; uncond]``
  (class 1000 is the null class); ``flux`` runs true CFG as two separate denoiser calls (cond, then uncond).
- ``pixart`` and ``dit`` transformers predict a learned sigma (``out_channels = 2 * in_channels``): only the
  first ``in_channels`` output channels are the noise prediction.
- ``dit`` has no latent output type (the kwargs ask for ``output_type="pt"``: decoded images in [0, 1]) and
  no ``callback_on_step_end``; ``pixart`` has only the legacy ``callback``/``callback_steps``.
- The video families ``ltx``, ``hunyuanvideo``, ``cogvideox`` and ``animatediff`` are built in ``tiny_video.py``.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    DDIMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    WanPipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..schedulers import set_scheduler
from .components import (
    IMAGE_SIZE,
    LATENT_SIZE,
    NULL_CLASS,
    PROMPT_WORDS,
    SD_SCHEDULER_CONFIG,
    TEXT_DIM,
    TEXT_SEQ_LEN,
    embeds,
    finish,
    image,
    masked_embedding_arguments,
    small_vae,
    text_config,
    tiny_tokenizer,
    wan_transformer,
    wan_vae,
)
from .tiny_more import (
    hidream_arguments,
    tiny_hidream,
    tiny_kolors,
    tiny_sana,
    tiny_wan22,
    tiny_wan22_5b,
    tiny_wan_i2v,
    wan22_5b_arguments,
    wan_i2v_arguments,
)

# The UNet settings SD and SDXL share: two levels of widths 16 and 32 over the 8 x 8 latents.
_TWO_LEVEL_UNET: dict[str, Any] = {"sample_size": LATENT_SIZE, "in_channels": 4, "out_channels": 4,
                                   "block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8}
# The transformer settings PixArt and DiT share: 2 blocks over 2 x 2 patches of the 8 x 8 latents, learned sigma.
_LEARNED_SIGMA_DIT: dict[str, Any] = {
    "sample_size": LATENT_SIZE, "num_layers": 2, "patch_size": 2, "attention_head_dim": 8, "num_attention_heads": 2,
    "in_channels": 4, "out_channels": 8, "attention_bias": True, "activation_fn": "gelu-approximate",
    "norm_elementwise_affine": False,
}


def tiny_sd(
    seed: int = 0, prediction_type: str = "epsilon", scheduler: str = "ddim"
) -> StableDiffusionPipeline:
    """Tiny Stable Diffusion 1.x pipeline (UNet with cross-attention, CLIP text encoder)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **_TWO_LEVEL_UNET,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2,
        cross_attention_dim=TEXT_DIM,
    )
    tokenizer = tiny_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=small_vae(),
        text_encoder=CLIPTextModel(text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG, prediction_type=prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return set_scheduler(finish(pipe), scheduler)


def tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """Tiny SDXL pipeline: two CLIP text encoders, ``text_time`` added conditioning, Euler scheduler."""
    torch.manual_seed(seed)
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        **_TWO_LEVEL_UNET,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_DIM,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # 6 micro-conditioning ids (original size, crop, target size) + the pooled text embedding.
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_DIM,
    )
    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=small_vae(),
        text_encoder=CLIPTextModel(text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(text_config(tokenizer_2, projection_dim=TEXT_DIM)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
        add_watermarker=False,
    )
    return set_scheduler(finish(pipe), "euler")


def tiny_sd3(seed: int = 0, **transformer: Any) -> StableDiffusion3Pipeline:
    """Tiny SD3 pipeline (MMDiT, flow matching) without text encoders: call it with embeddings. `transformer`
    settings override the MMDiT's (SD3.5: query/key RMS norms and a dual-attention block)."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        **transformer,
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        caption_projection_dim=16,
        pooled_projection_dim=TEXT_DIM,
        pos_embed_max_size=LATENT_SIZE,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=small_vae(shift_factor=0.0),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    return finish(pipe)


def tiny_flux(seed: int = 0, heads: int = 2, double: int = 1, single: int = 1) -> FluxPipeline:
    """Tiny Flux pipeline (no guidance embedding, dynamic shifting) without text encoders; `heads` of 16 channels,
    `double` and `single` blocks."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed in 2 x 2 patches
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=16,
        num_attention_heads=heads,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=False,
        axes_dims_rope=(4, 4, 8),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=small_vae(shift_factor=0.0),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    return finish(pipe)


def tiny_pixart(seed: int = 0, sigma: bool = False) -> PixArtAlphaPipeline | PixArtSigmaPipeline:
    """Tiny PixArt-α (or -Σ) pipeline with a learned-sigma transformer and DPM-Solver++ 2M."""
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        **_LEARNED_SIGMA_DIT,
        caption_channels=TEXT_DIM,
        cross_attention_dim=16,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_eps=1e-6,
    )
    pipeline_class = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = pipeline_class(
        tokenizer=None,
        text_encoder=None,
        vae=small_vae(),
        transformer=transformer,
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
    )
    return set_scheduler(finish(pipe), "dpmpp_2m")


def tiny_dit(seed: int = 0) -> DiTPipeline:
    """Tiny class-conditional DiT pipeline (adaLN-Zero, learned sigma, 1000 classes + null class)."""
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(**_LEARNED_SIGMA_DIT, num_embeds_ada_norm=NULL_CLASS, norm_type="ada_norm_zero")
    pipe = DiTPipeline(
        transformer=transformer,
        vae=small_vae(),
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
        id2label={i: f"class {i}" for i in range(NULL_CLASS)},
    )
    return finish(pipe)


def sd15_like(width: int = 64, text_width: int = 64, seed: int = 0, device: str = "cpu") -> StableDiffusionPipeline:
    """A random-weight Stable Diffusion pipeline with SD-1.5's UNet block structure (4 levels of widths w, 2w, 4w,
    4w, 2 layers each, cross-attention in the first three, 8 heads); width 320 and text width 768 are SD-1.5's.
    The text encoder is a 2-layer CLIP and the VAE a 2-level one (latents at half the image size). The UNet is
    initialised on `device` (fast on a GPU); the scheduler's tables stay on the host, as diffusers keeps them."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, block_out_channels=(width, 2 * width, 4 * width, 4 * width),
            layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=text_width,
            attention_head_dim=8)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=small_vae(), text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_like(width: int = 128, layers: int = 4, seed: int = 0, device: str = "cpu") -> DiffusionPipeline:
    """A random-weight Wan 2.1 pipeline for benchmarks: Wan's transformer structure (patch 1×2×2, RMS query/key norm
    across heads, cross-attention to T5-width text, 6-way adaLN) at `width` = 8 heads × width/8, `layers` blocks,
    over tiny_wan's VAE (8× spatial, 4× temporal downsampling)."""
    torch.manual_seed(seed)
    pipe = tiny_wan(seed)
    transformer = wan_transformer(num_attention_heads=8, attention_head_dim=width // 8, ffn_dim=4 * width,
                                  num_layers=layers, rope_max_seq_len=1024)
    return finish(WanPipeline(**{**pipe.components, "transformer": transformer.eval()})).to(device)


def flux_like(width: int = 768, double: int = 2, single: int = 4, seed: int = 0, device: str = "cpu"
              ) -> FluxPipeline:
    """A random-weight Flux pipeline for benchmarks: Flux.1's transformer structure (double-stream blocks, then
    single-stream blocks on the joint sequence, rotary positions, adaLN) at `width` = heads × 16, Flux.1's 1 : 2
    ratio of double to single blocks, over tiny_flux's VAE (latents at half the image size, packed 2 × 2)."""
    return tiny_flux(seed, heads=width // 16, double=double, single=single).to(device)


def tiny_wan(seed: int = 0) -> WanPipeline:
    """Tiny Wan 2.1 pipeline (video DiT on 5-D latents, flow matching) without text encoder: call it with embeddings.
    The configuration facts are diffusers' own test suite's (tests/pipelines/wan/test_wan.py)."""
    torch.manual_seed(seed)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=wan_vae(), transformer=wan_transformer(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    return finish(pipe)


def tiny_qwenimage(seed: int = 0) -> DiffusionPipeline:
    """Tiny Qwen-Image pipeline (MMDiT on packed tokens, flow matching, true CFG) without text encoder: call it with
    embeddings and masks. The configuration facts are diffusers' own test suite's (tests/pipelines/qwenimage)."""
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=TEXT_DIM, guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=4 * 6, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                             tokenizer=None, transformer=transformer)
    return finish(pipe)


# family → its tiny builder (adding a family: its builder and call arguments, and a line here)
BUILDERS: dict[str, Any] = {
    "sd": tiny_sd,
    "sdxl": tiny_sdxl,
    "sd3": tiny_sd3,
    "sd35": partial(tiny_sd3, qk_norm="rms_norm", dual_attention_layers=(0,)),
    "flux": tiny_flux,
    "pixart": tiny_pixart,
    "pixart_sigma": partial(tiny_pixart, sigma=True),
    "dit": tiny_dit,
    "wan": tiny_wan,
    "wan22": tiny_wan22,
    "wan_i2v": tiny_wan_i2v,
    "wan22_5b": tiny_wan22_5b,
    "wan22_5b_i2v": partial(tiny_wan22_5b, image_to_video=True),
    "sana": tiny_sana,
    "kolors": tiny_kolors,
    "hidream": tiny_hidream,
    "qwenimage": tiny_qwenimage,
}


def tiny_pipeline(family: str, seed: int = 0) -> DiffusionPipeline:
    """Build the tiny pipeline of ``family`` (one of ``FAMILIES``) with its default scheduler."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {tuple(BUILDERS)}")
    return BUILDERS[family](seed=seed)


def _class_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    labels = torch.randint(0, NULL_CLASS, (batch,), generator=rng)
    return {"class_labels": labels.tolist(), "guidance_scale": scale, "output_type": "pt"}


def _prompt_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    prompts = [PROMPT_WORDS[(seed + i) % len(PROMPT_WORDS)] for i in range(batch)]
    return image() | {"prompt": prompts, "negative_prompt": ["blurry"] * batch, "guidance_scale": scale}


def _pooled_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    return image() | {
        "prompt_embeds": embeds(batch, rng), "pooled_prompt_embeds": torch.randn(batch, TEXT_DIM, generator=rng),
        "negative_prompt_embeds": embeds(batch, rng),
        "negative_pooled_prompt_embeds": torch.randn(batch, TEXT_DIM, generator=rng),
        "guidance_scale": scale,
    }


def _flux_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    kwargs = _pooled_arguments(batch, rng, scale, seed)
    del kwargs["guidance_scale"]
    return kwargs | {"true_cfg_scale": scale}


def _qwenimage_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    mask = torch.ones(batch, TEXT_SEQ_LEN, dtype=torch.long)
    return image(2 * IMAGE_SIZE) | {
        "prompt_embeds": embeds(batch, rng), "negative_prompt_embeds": embeds(batch, rng),
        "prompt_embeds_mask": mask, "negative_prompt_embeds_mask": mask.clone(), "true_cfg_scale": scale,
    }


def _wan_arguments(batch: int, rng: torch.Generator, scale: float, seed: int) -> dict[str, Any]:
    return image() | {"prompt_embeds": embeds(batch, rng), "negative_prompt_embeds": embeds(batch, rng),
                       "num_frames": 5, "guidance_scale": scale}


# family → its call arguments (batch, generator for random inputs, guidance scale, seed) beyond steps and generator
CALL_ARGUMENTS: dict[str, Any] = {
    "sd": _prompt_arguments,
    "sdxl": _prompt_arguments,
    "sd3": _pooled_arguments,
    "sd35": _pooled_arguments,
    "flux": _flux_arguments,
    "pixart": masked_embedding_arguments,
    "pixart_sigma": masked_embedding_arguments,
    "dit": _class_arguments,
    "wan": _wan_arguments,
    "wan22": _wan_arguments,
    "wan_i2v": wan_i2v_arguments,
    "wan22_5b": wan22_5b_arguments,
    "wan22_5b_i2v": partial(wan22_5b_arguments, image_to_video=True),
    "sana": partial(masked_embedding_arguments, size=2 * IMAGE_SIZE),  # Sana needs multiples of 32
    "kolors": _pooled_arguments,
    "hidream": hidream_arguments,
    "qwenimage": _qwenimage_arguments,
}


# The families built in group modules, each with its own BUILDERS and CALL_ARGUMENTS tables. A group whose diffusers
# classes the installed diffusers lacks (older than the group's newest family) is left out.
GROUPS = ("tiny_video", "tiny_flux_variants", "tiny_zimage")
for _group in GROUPS:
    try:
        _module = importlib.import_module(f".{_group}", __package__)
    except ImportError:
        continue
    BUILDERS.update(_module.BUILDERS)
    CALL_ARGUMENTS.update(_module.CALL_ARGUMENTS)
# guidance-distilled families: no negative branch, so no `uncond` reference (every other reference works)
DISTILLED = ("flux2", "flux2_klein_distilled")
FAMILIES = tuple(family for family in BUILDERS if family not in DISTILLED)  # families with a CFG branch


def tiny_call_kwargs(
    family: str,
    batch: int = 2,
    seed: int = 0,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 4,
) -> dict[str, Any]:
    """Call arguments for the tiny pipeline of ``family``, deterministic from ``seed``.

    SD/SDXL get short prompts (run through the tiny tokenizer), the others random embeddings (``TEXT_SEQ_LEN`` x
    ``TEXT_DIM``), DiT class labels. ``guidance_scale`` becomes ``true_cfg_scale`` where that is the pipeline's CFG
    switch (Flux, Qwen-Image). All but DiT return latents; Flux's are packed ``(batch, tokens, 4 * channels)``; Wan's
    (5 frames) are ``(batch, 16, 2, 4, 4)`` video latents in ``.frames``.
    """
    if family not in CALL_ARGUMENTS:
        raise ValueError(f"unknown family {family!r}; expected one of {tuple(CALL_ARGUMENTS)}")
    rng = torch.Generator().manual_seed(seed)
    return {"num_inference_steps": num_inference_steps, "generator": torch.Generator().manual_seed(seed),
            **CALL_ARGUMENTS[family](batch, rng, guidance_scale, seed)}
