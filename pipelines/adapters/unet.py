"""UNet pipelines: Stable Diffusion 1.x/2.x, SDXL, and class-conditional UNet2DModel pipelines.

Batch [uncond; cond]; the time embedding is `unet.time_embedding` (class and SDXL's added text/time
embeddings are added after it and stay untouched by TSG).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from guidance.errors import GuidanceError

from ..call import Path
from .doubled import DoubledBatchAdapter


class UNetAdapter(DoubledBatchAdapter):
    """Any pipeline whose `unet` sees the doubled [uncond; cond] batch."""

    class_field = ("class_labels",)
    pag_layers = ("mid",)  # diffusers' StableDiffusionPAGPipeline / StableDiffusionXLPAGPipeline default

    @property
    def embedding_fields(self) -> tuple[Path, ...]:  # type: ignore[override]
        """The text embedding; Kandinsky 2.2's image embedding (projected to encoder states inside the UNet)."""
        if self.denoiser.config.get("encoder_hid_dim_type") == "image_proj":
            return (("added_cond_kwargs", "image_embeds"),)
        return (("encoder_hidden_states",),)

    @property
    def condition_kind(self) -> str:
        """A cross-attention UNet is text (or image-embedding) conditioned: its class labels are an auxiliary input
        (the x4 upscaler's noise level, DeepFloyd IF's), not a condition to guide against."""
        config = self.denoiser.config
        if config.get("cross_attention_dim") is not None:
            return "text"
        return "class" if config.get("num_class_embeds") else "none"

    def num_classes(self, pipe: Any) -> int | None:
        if getattr(pipe, "num_classes", None) is not None:
            return int(pipe.num_classes)
        embeds = self.denoiser.config.get("num_class_embeds")
        return None if embeds is None else int(embeds) - 1  # the last class is the null class

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_embedding]

    def nag_layers(self, denoiser: nn.Module) -> list[tuple[nn.Module, str]]:
        """Every cross-attention (`attn2`) of a text UNet, as the official SD-XL pipeline sets its processors."""
        if self.condition_kind != "text" or self.denoiser.config.get("encoder_hid_dim_type") == "image_proj":
            return super().nag_layers(denoiser)
        return [(module, "cross") for module in denoiser.modules()
                if isinstance(module, Attention) and module.is_cross_attention]

    @property
    def output_class(self) -> type:
        if type(self.denoiser).__name__ == "UNet2DModel":
            return UNet2DOutput
        return UNet2DConditionOutput

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds, _ = self.pipe.encode_prompt(prompts, self.pipe._execution_device, 1, False)
        return {"encoder_hidden_states": embeds}


class ClassConditionalAdapter(UNetAdapter):
    """guidance.pipelines.ClassConditionalPipeline: the digits UNet or the analytic mixture."""


    @property
    def condition_kind(self) -> str:
        return "class"

    def time_embedders(self) -> list[nn.Module]:
        if not hasattr(self.denoiser, "time_embedding"):
            raise GuidanceError(f"{type(self.denoiser).__name__} has no time embedding, so TSG cannot perturb it. "
                                "Use reference uncond or icg.")
        return super().time_embedders()


class SDXLAdapter(UNetAdapter):
    """SDXL, and Kolors (diffusers' pipelines/kolors/pipeline_kolors.py KolorsPipeline: the same `text_time` UNet on
    the same [uncond; cond] batch, ε-prediction, nothing after CFG; its ChatGLM states pass the UNet's text_proj, and
    its encode_prompt has SDXL's arguments and returns): the pooled text embedding in added_cond_kwargs is part of
    the condition. PAG's default "mid" is also diffusers' KolorsPAGPipeline's."""

    embedding_fields = (("encoder_hidden_states",), ("added_cond_kwargs", "text_embeds"))

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, device=self.pipe._execution_device, num_images_per_prompt=1,
            do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "added_cond_kwargs/text_embeds": pooled}
