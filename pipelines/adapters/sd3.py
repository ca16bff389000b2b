"""Stable Diffusion 3: MMDiT on a doubled [uncond; cond] batch, rectified flow, pooled text projections.

The time embedding is `transformer.time_text_embed.timestep_embedder` (the pooled text is added after it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from guidance.attention import NAGNorm
from guidance.errors import GuidanceError

from ..call import DenoiserCall
from .doubled import DoubledBatchAdapter

if TYPE_CHECKING:
    from guidance.spec import Guidance

SKIP_LAYERS = ("SD3's own skip-layer guidance (skip_guidance_layers) would build its term from the guided prediction. "
               "Put it in the spec instead: terms: [{reference: {name: slg, layers: [7, 8, 9]}, scale: 2.8, schedule: "
               "{name: steps, start: 0.01, stop: 0.2}}], and drop skip_guidance_layers.")


class SD3Adapter(DoubledBatchAdapter):
    denoiser_attr = "transformer"
    embedding_fields = (("encoder_hidden_states",), ("pooled_projections",))
    pag_layers = ("blocks.1",)  # diffusers' StableDiffusion3PAGPipeline default (it also matches blocks 10–19)
    joint_blocks = True
    block_lists = ("transformer_blocks",)
    skip_layers = (7, 8, 9)  # SD3.5 Medium's skip-layer guidance (diffusers, Stability AI's sd3_infer.py)

    # NAG: the official SD3 processor's L1 norm with its 1e-7 guards and α; the negative text stream carries the
    # conditional rows' pooled text and time (the official pipeline's)
    nag_norm = NAGNorm(p=1, epsilon=1e-7)
    nag_alpha = 0.125
    nag_copied_fields = (("timestep",), ("pooled_projections",))

    def nag_layers(self, denoiser: nn.Module) -> list[tuple[nn.Module, str]]:
        return [(block.attn, "joint") for block in denoiser.transformer_blocks]

    def nag_image_norms(self, denoiser: nn.Module) -> list[nn.Module]:
        return [*(block.norm1 for block in denoiser.transformer_blocks), denoiser.norm_out]

    def check_nag(self, guidance: Guidance) -> None:
        """A perturbed reference shares the call (and its joint attention or blocks) with the conditional rows, whose
        text stream NAG extends: refused."""
        super().check_nag(guidance)
        for reference in (guidance.reference, *(term.reference for term in guidance.terms)):
            if reference.perturbs_time_embedding or getattr(reference, "perturbation", None):
                raise GuidanceError(
                    f"NAG cannot share {type(self.pipe).__name__}'s denoiser call with reference '{reference.name}': "
                    "it perturbs blocks, attention or the time embedding of rows in the same call, while NAG extends "
                    "the conditional rows' text stream through every joint block. Use NAG with uncond or icg, or the "
                    "perturbed reference without NAG.")

    def run_kwargs(self, kwargs: dict[str, Any], needs_pipeline_reference: bool) -> dict[str, Any]:
        if kwargs.get("skip_guidance_layers") is not None:
            raise GuidanceError(SKIP_LAYERS)
        return super().run_kwargs(kwargs, needs_pipeline_reference)

    def check_call(self, call: DenoiserCall) -> None:
        """SD3's own skip-layer guidance runs an extra call with `skip_layers` and combines it with the guided
        output the pipeline received: refused (an slg term does it right)."""
        if call.get(("skip_layers",)) is not None:
            raise GuidanceError(SKIP_LAYERS)

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_text_embed.timestep_embedder]

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        clip_tokens = 77
        length = like["encoder_hidden_states"].shape[1] - clip_tokens
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.pipe._execution_device,
            num_images_per_prompt=1, do_classifier_free_guidance=False, max_sequence_length=max(length, 1))
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
