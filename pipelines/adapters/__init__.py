"""Pipeline-family adapters and the detection of a pipeline's family."""

from __future__ import annotations

from typing import Any

from guidance.errors import GuidanceError

from ..class_conditional import ClassConditionalPipeline
from .base import Adapter
from .dit import DiTAdapter
from .flux import FluxAdapter
from .hidream import HiDreamAdapter
from .pixart import PixArtAdapter
from .qwenimage import QwenImageAdapter
from .sana import SanaAdapter
from .sd3 import SD3Adapter
from .unet import ClassConditionalAdapter, SDXLAdapter, UNetAdapter
from .wan import WanAdapter

SUPPORTED = ("StableDiffusionPipeline (1.x/2.x)", "StableDiffusionXLPipeline", "KolorsPipeline",
             "StableDiffusion3Pipeline", "FluxPipeline", "PixArtAlphaPipeline", "PixArtSigmaPipeline", "DiTPipeline",
             "WanPipeline and WanImageToVideoPipeline (Wan 2.1; Wan 2.2 with both experts)", "QwenImagePipeline",
             "SanaPipeline", "HiDreamImagePipeline",
             "guidance.pipelines.ClassConditionalPipeline (the digits model, the analytic mixture)",
             "other class-conditional UNet2DModel pipelines that call unet(x, t, class_labels=...) on a [null; cond] "
             "batch")

# The transformer families: denoiser class → adapter (a new family is one adapter file and one line here).
_BY_TRANSFORMER = {"FluxTransformer2DModel": FluxAdapter, "SD3Transformer2DModel": SD3Adapter,
                   "PixArtTransformer2DModel": PixArtAdapter, "DiTTransformer2DModel": DiTAdapter,
                   "WanTransformer3DModel": WanAdapter, "QwenImageTransformer2DModel": QwenImageAdapter,
                   "SanaTransformer2DModel": SanaAdapter, "HiDreamImageTransformer2DModel": HiDreamAdapter}


def adapter_for(pipe: Any) -> Adapter:
    """The adapter of `pipe`'s family, or a GuidanceError naming the supported pipelines."""
    transformer = getattr(pipe, "transformer", None)
    unet = getattr(pipe, "unet", None)
    cls: type[Adapter] | None = None
    if isinstance(pipe, ClassConditionalPipeline):
        cls = ClassConditionalAdapter
    elif transformer is not None:
        name = type(getattr(transformer, "_orig_mod", transformer)).__name__
        cls = _BY_TRANSFORMER.get(name)
        if name == "Transformer2DModel" and type(pipe).__name__ == "DiTPipeline":
            cls = DiTAdapter
    elif unet is not None:
        name = type(getattr(unet, "_orig_mod", unet)).__name__
        if name == "UNet2DConditionModel":
            text_time = unet.config.get("addition_embed_type") == "text_time"
            cls = SDXLAdapter if text_time else UNetAdapter
        elif name == "UNet2DModel" and unet.config.get("num_class_embeds"):
            cls = UNetAdapter
    if cls is None:
        raise GuidanceError(
            f"Unsupported pipeline {type(pipe).__name__}: guidance wraps the denoiser of these families: "
            f"{'; '.join(SUPPORTED)}. Open an issue with the pipeline class if you need another."
        )
    return cls(pipe)


__all__ = ["SUPPORTED", "Adapter", "adapter_for"]
