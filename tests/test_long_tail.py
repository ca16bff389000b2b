"""Pipelines beyond the main families that reuse their denoisers: each works (equal to its own CFG) or is refused
in one sentence before any step."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import DDPMScheduler, IFSuperResolutionPipeline, StableDiffusionSAGPipeline, UNet2DConditionModel

import guidance
from guidance.errors import GuidanceError
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor


def tiny_if_stage2() -> IFSuperResolutionPipeline:
    """DeepFloyd IF's stage II: a UNet on 6 input channels (the noisy image and the upscaled stage-I image) with a
    learned variance (6 output channels: 3 + 3), configuration facts from diffusers' tests/pipelines/deepfloyd_if."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), in_channels=6, out_channels=6,
        cross_attention_dim=32, encoder_hid_dim=32, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
        act_fn="gelu", class_embed_type="timestep", mid_block_scale_factor=1.414, time_embedding_act_fn="gelu",
        time_embedding_dim=32).eval()
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", thresholding=True, dynamic_thresholding_ratio=0.95,
                              sample_max_value=1.0, variance_type="learned_range")
    pipe = IFSuperResolutionPipeline(
        tokenizer=None, text_encoder=None, unet=unet, scheduler=scheduler,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), feature_extractor=None,
        safety_checker=None, watermarker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def if_stage2_kwargs() -> dict:
    rng = torch.Generator().manual_seed(0)
    return {"image": torch.rand(2, 3, 8, 8, generator=rng), "prompt_embeds": torch.randn(2, 8, 32, generator=rng),
            "negative_prompt_embeds": torch.randn(2, 8, 32, generator=rng), "num_inference_steps": 3,
            "output_type": "pt", "height": 16, "width": 16, "generator": torch.Generator().manual_seed(1)}


def test_if_stage2_guides_the_noise_channels_only() -> None:
    """The learned variance (output channels 3–5) is not guided: cfg equals the pipeline's own CFG, which splits the
    output in halves although its input has 6 channels too."""
    pipe = tiny_if_stage2()
    native = output_tensor(pipe(**if_stage2_kwargs(), guidance_scale=4.0))
    got = output_tensor(guidance.run(pipe, {"scale": 4.0}, **if_stage2_kwargs()))
    assert (got - native).abs().max() <= 1e-5
    apg = output_tensor(guidance.run(pipe, {"scale": 4.0, "rule": "apg"}, **if_stage2_kwargs()))
    assert torch.isfinite(apg).all() and (apg - native).abs().max() > 1e-4


def test_sag_pipeline_is_refused_before_any_step() -> None:
    sd = tiny_pipeline("sd")
    accepted = inspect.signature(StableDiffusionSAGPipeline.__init__).parameters
    pipe = StableDiffusionSAGPipeline(**{k: v for k, v in sd.components.items() if k in accepted})
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    kwargs = tiny_call_kwargs("sd")
    del kwargs["guidance_scale"]
    with pytest.raises(GuidanceError, match="StableDiffusionSAGPipeline is not supported: its self-attention "
                                            "guidance reads the unconditional prediction"):
        guidance.run(pipe, {"scale": 3.0}, **kwargs)
    assert calls == []
