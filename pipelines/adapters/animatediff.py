"""AnimateDiff (AnimateDiffPipeline, diffusers pipelines/animatediff/pipeline_animatediff.py): a Stable Diffusion UNet
with a motion adapter (UNetMotionModel) on 5-D latents (batch, channels, frames, height, width), ε-prediction. One UNet
call per step on the doubled batch [uncond; cond]; the pipeline combines `u + s·(c − u)`, nothing after it. The UNet
folds the frames into the batch inside itself, after its time embedding (`unet.time_embedding`, TSG's place).

Its attention modules see the frames (spatial attention) or the pixels (motion modules) folded into the batch, so
a perturbation cannot pick a sample's rows there: pag, seg and stg are refused; its UNet has no block list for slg.
"""

from __future__ import annotations

from diffusers.models.unets.unet_motion_model import UNetMotionOutput

from .unet import UNetAdapter


class AnimateDiffAdapter(UNetAdapter):
    pag_layers = ("mid_block.*attn1",)  # diffusers' AnimateDiffPAGPipeline default
    attention_refusal = ("its UNetMotionModel folds the frames (and, in the motion modules, the pixels) into the "
                         "batch of every attention layer, so the perturbed samples' rows cannot be told apart there. "
                         "Use tsg, icg or autoguidance.")

    @property
    def output_class(self) -> type:
        return UNetMotionOutput
