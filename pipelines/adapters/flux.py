"""Flux: true CFG runs the conditional and the negative prompt as two separate transformer calls per step (the
separate-calls protocol, adapters/separate.py). ICG and TSG build their reference rows from the conditional call
itself, so they need no negative prompt. Flux's `guidance_scale` stays the distilled-guidance input;
`true_cfg_scale` is switched on by guidance.run (docs/CONVENTIONS.md §17).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from guidance.errors import GuidanceError

from .separate import SeparateCallsAdapter


class FluxAdapter(SeparateCallsAdapter):
    denoiser_attr = "transformer"
    embedding_fields = (("encoder_hidden_states",), ("pooled_projections",))
    skip_keys = frozenset({"img_ids", "txt_ids"})
    timestep_scale = 1000.0
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    # ComfyUI's SkipLayerGuidanceDiT defaults for Flux (double blocks 7, 8, 9 and single blocks 7, 8, 9), indexed into
    # the double blocks then the single blocks of Flux.1's 19 + 38
    skip_layers = (7, 8, 9, 26, 27, 28)

    def block_passthrough(self, arguments: dict[str, Any]) -> Any:
        return arguments["encoder_hidden_states"], arguments["hidden_states"]

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_text_embed.timestep_embedder]

    def run_kwargs(self, kwargs: dict[str, Any], needs_pipeline_reference: bool) -> dict[str, Any]:
        if "true_cfg_scale" in kwargs:
            raise GuidanceError("guidance.run sets Flux's true_cfg_scale itself; put the strength in the spec's "
                                "`scale` (Flux's guidance_scale stays the distilled-guidance input).")
        kwargs = dict(kwargs)
        if not needs_pipeline_reference:
            return {**kwargs, "true_cfg_scale": 1.0}
        if kwargs.get("negative_prompt_embeds") is None and kwargs.get("negative_prompt") is None:
            if kwargs.get("prompt_embeds") is not None:
                raise GuidanceError("Flux with reference `uncond` needs a negative prompt: pass negative_prompt_embeds "
                                    "and negative_pooled_prompt_embeds with your prompt_embeds (or use icg/tsg).")
            kwargs["negative_prompt"] = ""
        return {**kwargs, "true_cfg_scale": 2.0}

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.pipe._execution_device, num_images_per_prompt=1,
            max_sequence_length=like["encoder_hidden_states"].shape[1])
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
