"""Pipelines beyond the main families that reuse their denoisers: each works (equal to its own CFG) or is refused
in one sentence before any step."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import DDPMScheduler, IFSuperResolutionPipeline, StableDiffusionSAGPipeline, UNet2DConditionModel

import guidance
from guidance.errors import GuidanceError
from guidance.pipelines.adapters import adapter_for
from guidance.pipelines.call import DenoiserCall, RowView
from guidance.pipelines.testing.long_tail import LONG_TAIL
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


# What each pipeline of the long-tail table does under guidance (docs/LONG_TAIL.md): works, or refused with its reason.
WORKS = ("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionUpscalePipeline",
         "StableDiffusionDepth2ImgPipeline", "StableDiffusionControlNetPipeline",
         "StableDiffusionControlNetImg2ImgPipeline", "StableDiffusionAdapterPipeline",
         "StableDiffusionPAGPipeline (pag_scale=0)", "StableDiffusionXLImg2ImgPipeline",
         "StableDiffusionXLInpaintPipeline", "StableDiffusion3Img2ImgPipeline", "FluxImg2ImgPipeline",
         "FluxInpaintPipeline", "FluxControlNetPipeline", "IFPipeline", "KandinskyV22Pipeline",
         "KandinskyV22ControlnetPipeline")
PAG_ON = "runs its own perturbed-attention guidance \\(pag_scale > 0\\).*pag_scale=0"
REFUSED = {
    "StableDiffusionPAGPipeline": PAG_ON + r".*\(StableDiffusionPipeline.from_pipe\(pipe\)\) with a pag term",
    "StableDiffusionXLPAGPipeline": PAG_ON + r".*\(StableDiffusionXLPipeline.from_pipe\(pipe\)\) with a pag term",
    "PixArtSigmaPAGPipeline": PAG_ON + r".*\(PixArtSigmaPipeline.from_pipe\(pipe\)\) with a pag term",
    "StableDiffusionInstructPix2PixPipeline": "not supported: its guidance has two scales over three batch parts.*"
                                              "image_guidance_scale",
    "StableDiffusionPanoramaPipeline": "not supported: it calls the UNet once per view window at every step",
    "StableDiffusionAttendAndExcitePipeline": "not supported: its attention updates call the UNet on the "
                                              "conditional rows alone",
    "FluxFillPipeline": "FluxFillPipeline has no classifier-free guidance.*Use reference icg or tsg",
    "AuraFlowPipeline": "Unsupported pipeline AuraFlowPipeline",
}
# refused for reference `uncond` only: icg and tsg build their reference from the conditional call
CONDITION_REFERENCES_ONLY = ("FluxFillPipeline",)


def test_every_long_tail_pipeline_has_an_expectation() -> None:
    assert sorted(LONG_TAIL) == sorted((*WORKS, *REFUSED))


def _denoiser_calls(pipe) -> list[int]:
    calls: list[int] = []
    denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    denoiser.register_forward_pre_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("label", WORKS)
def test_long_tail_pipeline_works(label: str) -> None:
    """cfg through guidance.run equals the pipeline's own CFG; apg, adaptive guidance and tsg run and stay finite,
    and apg moves the result away from CFG."""
    entry = LONG_TAIL[label]
    pipe = entry.build()
    native = output_tensor(pipe(**entry.kwargs(), **{entry.native: 3.0}))
    got = output_tensor(guidance.run(pipe, {"scale": 3.0}, **entry.kwargs()))
    assert (got - native).abs().max() <= 1e-5
    for spec in ({"rule": "apg"}, {"policy": {"name": "adaptive", "threshold": 0.5}}, {"reference": "tsg"}):
        out = output_tensor(guidance.run(pipe, {"scale": 3.0, **spec}, **entry.kwargs()))
        assert out.shape == native.shape and torch.isfinite(out).all(), spec
        if spec == {"rule": "apg"}:
            assert (out - native).abs().max() > 1e-4


@pytest.mark.parametrize("label", sorted(REFUSED))
def test_long_tail_pipeline_is_refused_before_any_step(label: str) -> None:
    entry = LONG_TAIL[label]
    pipe = entry.build()
    calls = _denoiser_calls(pipe)
    with pytest.raises(GuidanceError, match=REFUSED[label]):
        guidance.run(pipe, {"scale": 3.0}, **entry.kwargs())
    assert calls == []


@pytest.mark.parametrize("label", CONDITION_REFERENCES_ONLY)
def test_condition_references_run_without_a_negative_branch(label: str) -> None:
    """A pipeline without CFG still takes tsg and icg: their reference rows come from the conditional call."""
    entry = LONG_TAIL[label]
    pipe = entry.build()
    plain = output_tensor(pipe(**entry.kwargs()))
    for reference in ("tsg", {"name": "icg", "source": "gaussian"}):
        out = output_tensor(guidance.run(pipe, {"scale": 3.0, "reference": reference}, **entry.kwargs()))
        assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-4


def test_pag_pipeline_with_pag_on_is_refused_through_attach_too() -> None:
    """With attach the caller runs the PAG pipeline: refused when it sets its timesteps, before it installs its PAG
    attention processors or calls the UNet."""
    entry = LONG_TAIL["StableDiffusionPAGPipeline"]
    pipe = entry.build()
    processors = dict(pipe.unet.attn_processors)
    calls = _denoiser_calls(pipe)
    with guidance.attach(pipe, {"scale": 3.0}) as session, pytest.raises(GuidanceError, match=PAG_ON):
        pipe(**entry.kwargs(), guidance_scale=2.0, pag_scale=3.0, callback_on_step_end=session.callback)
    assert calls == [] and pipe.unet.attn_processors == processors


def test_icg_without_a_condition_embedding_is_refused() -> None:
    """A call whose condition sits in no field the adapter knows would give ICG a reference equal to the conditional
    branch: refused."""
    pipe = LONG_TAIL["StableDiffusionImg2ImgPipeline"].build()
    call = DenoiserCall({"sample": torch.zeros(2, 4, 8, 8), "timestep": 10, "encoder_hidden_states": None}, "sample")
    message = r"ICG found no condition embedding .*\(it looks in: encoder_hidden_states\)"
    with pytest.raises(GuidanceError, match=message):
        RowView(call, slice(1, 2), adapter_for(pipe), pipe).embeddings()
