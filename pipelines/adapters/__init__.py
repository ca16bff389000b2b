"""Pipeline-family adapters and the detection of a pipeline's family."""

from __future__ import annotations

from typing import Any

from guidance.errors import GuidanceError

from ..class_conditional import ClassConditionalPipeline
from .animatediff import AnimateDiffAdapter
from .base import Adapter
from .chroma import ChromaAdapter
from .cogvideox import CogVideoXAdapter
from .dit import DiTAdapter
from .flux import FluxAdapter
from .flux2 import Flux2Adapter, Flux2KleinAdapter
from .flux_kontext import FluxKontextAdapter
from .hidream import HiDreamAdapter
from .hunyuanvideo import HunyuanVideoAdapter
from .ltx import LTXAdapter
from .lumina2 import Lumina2Adapter
from .pixart import PixArtAdapter
from .qwenimage import QwenImageAdapter
from .sana import SanaAdapter
from .sd3 import SD3Adapter
from .unet import ClassConditionalAdapter, SDXLAdapter, UNetAdapter
from .wan import WanAdapter
from .zimage import ZImageAdapter

SUPPORTED = ("StableDiffusionPipeline (1.x/2.x)", "StableDiffusionXLPipeline", "KolorsPipeline",
             "StableDiffusion3Pipeline", "FluxPipeline", "FluxKontextPipeline",
             "Flux2Pipeline (guidance-distilled: no uncond)", "Flux2KleinPipeline", "ChromaPipeline", "Lumina2Pipeline",
             "PixArtAlphaPipeline", "PixArtSigmaPipeline", "SanaPipeline", "HiDreamImagePipeline", "DiTPipeline",
             "QwenImagePipeline", "WanPipeline and WanImageToVideoPipeline (Wan 2.1; Wan 2.2 with both experts)",
             "ZImagePipeline", "LTXPipeline", "HunyuanVideoPipeline", "CogVideoXPipeline", "AnimateDiffPipeline",
             "guidance.pipelines.ClassConditionalPipeline (the digits model, the analytic mixture)",
             "other class-conditional UNet2DModel pipelines that call unet(x, t, class_labels=...) on a [null; cond] "
             "batch")

# The transformer families: denoiser class → adapter (a new family is one adapter file and one line here).
_BY_TRANSFORMER = {"FluxTransformer2DModel": FluxAdapter, "SD3Transformer2DModel": SD3Adapter,
                   "PixArtTransformer2DModel": PixArtAdapter, "DiTTransformer2DModel": DiTAdapter,
                   "WanTransformer3DModel": WanAdapter, "QwenImageTransformer2DModel": QwenImageAdapter,
                   "LTXVideoTransformer3DModel": LTXAdapter, "HunyuanVideoTransformer3DModel": HunyuanVideoAdapter,
                   "CogVideoXTransformer3DModel": CogVideoXAdapter,
                   "Flux2Transformer2DModel": Flux2Adapter, "ChromaTransformer2DModel": ChromaAdapter,
                   "Lumina2Transformer2DModel": Lumina2Adapter,
                   "SanaTransformer2DModel": SanaAdapter, "HiDreamImageTransformer2DModel": HiDreamAdapter,
                   "ZImageTransformer2DModel": ZImageAdapter}
# Pipelines that share a denoiser class with another family but call it their own way.
_BY_PIPELINE = {"FluxKontextPipeline": FluxKontextAdapter, "Flux2KleinPipeline": Flux2KleinAdapter}

# Denoisers whose pipelines guidance refuses: why, and what to use instead.
_REFUSED_DENOISERS = {
    "LTX2VideoTransformer3DModel": (
        "LTX2Pipeline denoises video and audio in one transformer call and guides each with its own scale, plus its "
        "own STG and modality-isolation terms built from the guided prediction; guidance wraps one prediction per "
        "step, so it would guide the video alone and feed those terms a prediction they were not made for. Use "
        "LTX2Pipeline's own guidance (guidance_scale, audio_guidance_scale, stg_scale, modality_scale), or "
        "LTXPipeline (LTX-Video) with guidance."),
}


# Pipelines of a supported family whose own guidance guidance cannot reproduce: they read the CFG branches after
# combining them (where guidance has replaced them), guide with more than the two branches, or call the denoiser more
# than once per step.
_REFUSED = {
    "StableDiffusionSAGPipeline": "its self-attention guidance reads the unconditional prediction after CFG, which "
                                  "guidance replaces with the guided one, so its SAG term would be wrong. Use "
                                  "StableDiffusionPipeline(**pipe.components) with guidance (its pag and seg terms are "
                                  "the perturbed-attention methods it has), or the SAG pipeline without guidance.",
    **dict.fromkeys(
        ("StableDiffusionInstructPix2PixPipeline", "StableDiffusionXLInstructPix2PixPipeline"),
        "its guidance has two scales over three batch parts (text and image conditioned, image only, unconditional), "
        "which one guided prediction cannot reproduce. Use its own guidance_scale and image_guidance_scale without "
        "guidance."),
    "StableDiffusionPanoramaPipeline": "it calls the UNet once per view window at every step, and guidance guides "
                                       "one denoiser call per step. Use its own guidance_scale without guidance.",
    "StableDiffusionAttendAndExcitePipeline": "its attention updates call the UNet on the conditional rows alone "
                                              "within every step, before the CFG batch. Use its own guidance_scale "
                                              "without guidance.",
}


def adapter_for(pipe: Any) -> Adapter:
    """The adapter of `pipe`'s family, or a GuidanceError naming the supported pipelines."""
    if type(pipe).__name__ in _REFUSED:
        raise GuidanceError(f"{type(pipe).__name__} is not supported: {_REFUSED[type(pipe).__name__]}")
    transformer = getattr(pipe, "transformer", None)
    unet = getattr(pipe, "unet", None)
    cls: type[Adapter] | None = None
    if isinstance(pipe, ClassConditionalPipeline):
        cls = ClassConditionalAdapter
    elif transformer is not None:
        name = type(getattr(transformer, "_orig_mod", transformer)).__name__
        if name in _REFUSED_DENOISERS:
            raise GuidanceError(_REFUSED_DENOISERS[name])
        cls = _BY_PIPELINE.get(type(pipe).__name__) or _BY_TRANSFORMER.get(name)
        if name == "Transformer2DModel" and type(pipe).__name__ == "DiTPipeline":
            cls = DiTAdapter
    elif unet is not None:
        name = type(getattr(unet, "_orig_mod", unet)).__name__
        if name == "UNet2DConditionModel":
            text_time = unet.config.get("addition_embed_type") == "text_time"
            cls = SDXLAdapter if text_time else UNetAdapter
        elif name == "UNetMotionModel":
            cls = AnimateDiffAdapter
        elif name == "UNet2DModel" and unet.config.get("num_class_embeds"):
            cls = UNetAdapter
    if cls is None:
        raise GuidanceError(
            f"Unsupported pipeline {type(pipe).__name__}: guidance wraps the denoiser of these families: "
            f"{'; '.join(SUPPORTED)}. Open an issue with the pipeline class if you need another."
        )
    return cls(pipe)


__all__ = ["SUPPORTED", "Adapter", "adapter_for"]
