"""AnimateDiff (AnimateDiffPipeline, diffusers pipelines/animatediff/pipeline_animatediff.py): a Stable Diffusion UNet
with a motion adapter (UNetMotionModel) on 5-D latents (batch, channels, frames, height, width), ε-prediction. One UNet
call per step on the doubled batch [uncond; cond]; the pipeline combines `u + s·(c − u)`, nothing after it. The UNet
folds the frames into the batch inside itself, after its time embedding (`unet.time_embedding`, TSG's place).

The pipeline passes its prompt embeddings once per frame, (2B·frames, tokens, width), sample by sample: guidance keeps
them as (2B, frames, tokens, width), one row per sample, and flattens them back for the UNet.

Its attention modules see the frames (spatial attention) or the pixels (motion modules) folded into the batch, so
a perturbation cannot pick a sample's rows there: pag, seg and stg are refused; its UNet has no block list for slg.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.unets.unet_motion_model import UNetMotionOutput

from ..call import DenoiserCall
from .unet import UNetAdapter

EMBEDDINGS = "encoder_hidden_states"


def _per_frame(arguments: dict[str, Any]) -> dict[str, Any]:
    """The embeddings back as the UNet takes them: one row per frame."""
    return {**arguments, EMBEDDINGS: arguments[EMBEDDINGS].flatten(0, 1)}


class AnimateDiffAdapter(UNetAdapter):
    attention_refusal = ("its UNetMotionModel folds the frames (and, in the motion modules, the pixels) into the "
                         "batch of every attention layer, so the perturbed samples' rows cannot be told apart there. "
                         "Use tsg, icg or autoguidance.")

    def per_sample(self, call: DenoiserCall) -> DenoiserCall:
        embeddings, frames = call.get((EMBEDDINGS,)), call.sample.shape[2]
        if embeddings is None or embeddings.shape[0] != call.batch * frames:
            return call
        arguments = {**call.arguments, EMBEDDINGS: embeddings.unflatten(0, (call.batch, frames))}
        return DenoiserCall(arguments, call.sample_name, call.skip, call.positional, call.batch_dims, _per_frame)

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds = super().encode_prompts(prompts, like)[EMBEDDINGS]
        frames = like[EMBEDDINGS].shape[1]
        return {EMBEDDINGS: embeds[:, None].expand(-1, frames, -1, -1)}

    @property
    def output_class(self) -> type:
        return UNetMotionOutput
