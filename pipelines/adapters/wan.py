"""Wan 2.1 and 2.2 (diffusers' pipelines/wan/pipeline_wan.py WanPipeline, pipeline_wan_i2v.py
WanImageToVideoPipeline): a video DiT on 5-D latents (batch, channels, frames, height, width), flow matching, with
the prompt and the negative prompt as two separate transformer calls per step (the separate-calls protocol), combined
as `uncond + s·(cond − uncond)` and handed to the scheduler unchanged.

- Time: the transformer's `timestep` is the scheduler's timestep. With `expand_timesteps` (Wan 2.2 TI2V-5B) it is
  one time per token, (batch, tokens), and for image-to-video the conditioning first frame's tokens have time 0
  (their input is the clean encoded image): the step's time is the largest (`call_time`). The time embedding is
  `transformer.condition_embedder.time_embedder` (per token there: (batch, tokens, width)); the main block list is
  `transformer.blocks`.
- Wan 2.2's two experts: with `transformer_2` and the config's `boundary_ratio`, the steps with
  t ≥ boundary_ratio·num_train_timesteps run `transformer` at `guidance_scale`, the others `transformer_2` at
  `guidance_scale_2`. Both experts are routed and both get the terms' perturbations; the spec's schedule `experts`
  (`scale_2`) gives the second expert its own scale at the pipeline's boundary.
- Image-to-video: the transformer input is the noisy latents followed by the image condition's channels (mask and
  encoded first frame), and Wan 2.1's image-encoder states in `encoder_hidden_states_image`; the prediction has the
  latents' channels (Adapter.latents takes x_t from the leading channels).
- pag, seg and stg's attention mode are refused (Wan's WanAttention is not a diffusers Attention, so no
  identity-attention path is written for it); slg, stg (residual) and tsg work on both experts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from guidance.attention import NAGNorm
from guidance.errors import GuidanceError

from .separate import SeparateCallsAdapter


class WanAdapter(SeparateCallsAdapter):
    denoiser_attr = "transformer"
    expert_attrs = ("transformer_2",)
    block_lists = ("blocks",)
    skip_layers = (2,)  # STG's Wan 2.1 block (junhahyung/STGuidance, skip_guidance_block_idxs)

    # NAG: the official Wan processor's L1 norm, its masked clipping and α; only the text attention (attn2) changes
    nag_norm = NAGNorm(p=1, masked=True)
    nag_alpha = 0.25

    def nag_layers(self, denoiser: nn.Module) -> list[tuple[nn.Module, str]]:
        if denoiser.config.get("image_dim") is not None:
            raise GuidanceError(
                f"NAG on {type(self.pipe).__name__}: this Wan transformer's cross-attention also attends to image-"
                "encoder states, which the official code adds after guiding the text part; not implemented here. Use "
                "WanPipeline (text-to-video), or the pipeline's negative prompt with reference uncond.")
        return [(block.attn2, "cross") for block in denoiser.blocks]

    def nag_encode(self, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The call's negative embeddings, or its negative prompt ("" if none) through the pipeline's encode_prompt."""
        embeds = kwargs.get("negative_prompt_embeds")
        if embeds is None:
            if getattr(self.pipe, "text_encoder", None) is None:
                raise GuidanceError(f"NAG on {type(self.pipe).__name__} without a text encoder needs the negative "
                                    "prompt as negative_prompt_embeds.")
            embeds, _ = self.pipe.encode_prompt(
                prompt=kwargs.get("negative_prompt") or "", do_classifier_free_guidance=False,
                num_videos_per_prompt=kwargs.get("num_videos_per_prompt", 1),
                max_sequence_length=kwargs.get("max_sequence_length", 512), device=self.pipe._execution_device)
        return {"encoder_hidden_states": embeds}

    def boundary(self) -> float | None:
        ratio = self.pipe.config.get("boundary_ratio")
        if ratio is None or getattr(self.pipe, "transformer_2", None) is None:
            return None
        return ratio * self.pipe.scheduler.config.num_train_timesteps

    def call_time(self, timestep: torch.Tensor) -> float:
        return float(timestep.max())

    def run_kwargs(self, kwargs: dict[str, Any], needs_pipeline_reference: bool) -> dict[str, Any]:
        if "guidance_scale_2" in kwargs:
            raise GuidanceError("guidance.run sets the pipeline's guidance_scale_2 itself; give the second expert its "
                                "scale in the spec instead: schedule: {name: experts, scale_2: ...}.")
        return super().run_kwargs(kwargs, needs_pipeline_reference)

    def time_embedders(self) -> list[nn.Module]:
        return [denoiser.condition_embedder.time_embedder for denoiser in self.denoisers]

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ICG's prompt bank through the pipeline's own UMT5 encoding, padded to the call's text length."""
        embeds, _ = self.pipe.encode_prompt(
            prompt=prompts, do_classifier_free_guidance=False, num_videos_per_prompt=1,
            max_sequence_length=like["encoder_hidden_states"].shape[1], device=self.pipe._execution_device)
        return {"encoder_hidden_states": embeds}
