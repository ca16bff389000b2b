"""Pipeline-side user errors: each is a GuidanceError whose message names what is supported, raised before anything
is changed or with the pipeline restored exactly afterwards."""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    EulerAncestralDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UNet2DModel,
)

import guidance
from guidance import GuidanceError
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales

SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
                       "FluxPipeline", "PixArtAlphaPipeline", "DiTPipeline")
CFGPP_SCHEDULERS = ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                    "FlowMatchEulerDiscreteScheduler")


def kwargs_for(family: str, steps: int = 4) -> dict:
    return strip_scales(tiny_call_kwargs(family, batch=2, seed=0, num_inference_steps=steps))


def denoiser(pipe) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def snapshot(pipe) -> tuple:
    """What attach may touch: the denoiser's and scheduler's instance dicts (forward, step, set_timesteps), hooks."""
    module = denoiser(pipe)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
    return (pipe.scheduler, dict(module.__dict__).get("forward"), "forward" in module.__dict__,
            "step" in pipe.scheduler.__dict__, "set_timesteps" in pipe.scheduler.__dict__, hooks)


def message_of(excinfo) -> str:
    message = str(excinfo.value)
    assert message.strip() and "\n\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------------- pipelines


def tiny_ddpm_pipeline() -> DDPMPipeline:
    """An unconditional DDPMPipeline (UNet2DModel without class embeddings): not a supported family."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    return pipe


UNSUPPORTED = {
    "ddpm_pipeline": tiny_ddpm_pipeline,
    "object_with_linear_unet": lambda: types.SimpleNamespace(unet=torch.nn.Linear(2, 2), scheduler=DDIMScheduler()),
    "object_with_linear_transformer": lambda: types.SimpleNamespace(transformer=torch.nn.Linear(2, 2),
                                                                    scheduler=DDIMScheduler()),
    "plain_object": object,
}


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
@pytest.mark.parametrize("entry", ("attach", "run"))
def test_unsupported_pipeline(kind, entry):
    pipe = UNSUPPORTED[kind]()
    with pytest.raises(GuidanceError) as info:
        if entry == "attach":
            with guidance.attach(pipe, {"scale": 3}):
                pass
        else:
            guidance.run(pipe, {"scale": 3}, num_inference_steps=2)
    message = message_of(info)
    assert type(pipe).__name__ in message
    for name in SUPPORTED_PIPELINES:
        assert name in message
    if kind == "ddpm_pipeline":
        assert "forward" not in pipe.unet.__dict__


# ---------------------------------------------------------------------------------------------------- CFG++ schedulers


@pytest.mark.parametrize("scheduler_class", (PNDMScheduler, DDPMScheduler, LMSDiscreteScheduler,
                                             EulerAncestralDiscreteScheduler), ids=lambda c: c.__name__)
@pytest.mark.parametrize("entry", ("attach", "run"))
def test_cfgpp_unsupported_scheduler(scheduler_class, entry):
    pipe = tiny_pipeline("sd")
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    before = snapshot(pipe)
    with pytest.raises(GuidanceError) as info:
        if entry == "attach":
            with guidance.attach(pipe, {"rule": "cfgpp", "scale": 0.6}) as session:
                pipe(**kwargs_for("sd"), guidance_scale=2.0, callback_on_step_end=session.callback)
        else:
            guidance.run(pipe, {"rule": "cfgpp", "scale": 0.6}, **kwargs_for("sd"))
    message = message_of(info)
    assert scheduler_class.__name__ in message
    for name in CFGPP_SCHEDULERS:
        assert name in message
    assert snapshot(pipe) == before


def test_same_scheduler_without_cfgpp_is_fine():
    """The refusal is CFG++'s: plain CFG runs on PNDM."""
    pipe = tiny_pipeline("sd")
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    st: dict = {}
    out = output_tensor(guidance.run(pipe, {"scale": 3}, stats=st, **kwargs_for("sd")))
    assert torch.isfinite(out).all()
    assert st["steps"] and all(s["branches"] == ["cond", "reference"] for s in st["steps"])


@pytest.mark.parametrize("setting", ({"clip_sample": True}, {"thresholding": True}), ids=str)
@pytest.mark.parametrize("entry", ("attach", "run"))
def test_cfgpp_ddim_with_clipping(setting, entry):
    pipe = tiny_pipeline("sd")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **setting)
    before = snapshot(pipe)
    with pytest.raises(GuidanceError) as info:
        if entry == "attach":
            with guidance.attach(pipe, {"rule": "cfgpp"}):
                pass
        else:
            guidance.run(pipe, {"rule": "cfgpp"}, **kwargs_for("sd"))
    message = message_of(info)
    assert "DDIMScheduler" in message
    assert next(iter(setting)) in message
    assert "False" in message  # says how to fix it
    assert snapshot(pipe) == before


# ---------------------------------------------------------------------------------------------------- no CFG batch


@pytest.mark.parametrize("family", ("sd", "sd3"))
def test_attach_with_guidance_scale_one(family):
    pipe = tiny_pipeline(family)
    before = snapshot(pipe)
    with pytest.raises(GuidanceError) as info:
        with guidance.attach(pipe, {"scale": 5}) as session:
            pipe(**kwargs_for(family), guidance_scale=1.0, callback_on_step_end=session.callback)
    message = message_of(info)
    assert "guidance_scale" in message and "> 1" in message
    assert "guidance.run" in message
    assert snapshot(pipe) == before  # restored on the exception


def test_attach_flux_without_true_cfg():
    """Flux with reference uncond under attach needs true_cfg_scale > 1: with 1 the negative call never runs."""
    pipe = tiny_pipeline("flux")
    before = snapshot(pipe)
    with pytest.raises(GuidanceError) as info:
        with guidance.attach(pipe, {"scale": 5}) as session:
            pipe(**kwargs_for("flux"), true_cfg_scale=1.0, callback_on_step_end=session.callback)
    message = message_of(info)
    assert "negative" in message and "true_cfg_scale" in message
    assert snapshot(pipe) == before


@pytest.mark.parametrize(("family", "key"), [("sd", "guidance_scale"), ("sd", "guidance_rescale"),
                                             ("sd3", "guidance_scale"), ("flux", "true_cfg_scale")])
def test_run_refuses_scale_kwargs(family, key):
    pipe = tiny_pipeline(family)
    before = snapshot(pipe)
    with pytest.raises(GuidanceError) as info:
        guidance.run(pipe, {"scale": 3}, **kwargs_for(family), **{key: 0.5 if key == "guidance_rescale" else 3.0})
    message = message_of(info)
    assert key in message
    assert "scale" in message and "spec" in message
    assert snapshot(pipe) == before


# ---------------------------------------------------------------------------------------------------- Flux


def test_flux_uncond_without_negative_embeddings():
    pipe = tiny_pipeline("flux")
    kwargs = {k: v for k, v in kwargs_for("flux").items() if not k.startswith("negative_")}
    assert "prompt_embeds" in kwargs
    with pytest.raises(GuidanceError) as info:
        guidance.run(pipe, {"scale": 3}, **kwargs)
    message = message_of(info)
    assert "uncond" in message
    assert "negative_prompt_embeds" in message
    assert "icg" in message or "tsg" in message


def test_flux_uncond_with_negative_embeddings_runs(row_counter):
    pipe = tiny_pipeline("flux")
    counter = row_counter(pipe)
    st: dict = {}
    out = output_tensor(guidance.run(pipe, {"scale": 3}, stats=st, **kwargs_for("flux")))
    assert torch.isfinite(out).all()
    assert counter.calls == [2, 2] * 4  # conditional call, then the negative call, at every step


def test_flux_icg_needs_no_negative_embeddings():
    pipe = tiny_pipeline("flux")
    kwargs = {k: v for k, v in kwargs_for("flux").items() if not k.startswith("negative_")}
    st: dict = {}
    guidance.run(pipe, {"scale": 3, "reference": {"name": "icg", "source": "gaussian"}}, stats=st, **kwargs)
    assert all(s["branches"] == ["cond", "reference"] for s in st["steps"])


# ---------------------------------------------------------------------------------------------------- ICG sources


@pytest.mark.parametrize(("family", "source", "words"), [
    ("sd3", "prompt", ("text encoder", "gaussian")),
    ("sd", "class", ("'class'", "text", "prompt", "gaussian")),
    ("dit", "prompt", ("'prompt'", "class")),
    ("dit", "gaussian", ("'gaussian'", "class")),
])
def test_icg_source_that_does_not_fit(family, source, words):
    pipe = tiny_pipeline(family)
    before = snapshot(pipe)
    with pytest.raises(GuidanceError) as info:
        guidance.run(pipe, {"scale": 3, "reference": {"name": "icg", "source": source}}, **kwargs_for(family))
    message = message_of(info)
    for word in words:
        assert word in message
    assert snapshot(pipe) == before


@pytest.mark.parametrize(("family", "source"), [("sd3", "gaussian"), ("sd", "prompt"), ("sd", "gaussian"),
                                                ("dit", "class")])
def test_icg_source_that_fits(family, source):
    pipe = tiny_pipeline(family)
    st: dict = {}
    out = output_tensor(guidance.run(pipe, {"scale": 3, "reference": {"name": "icg", "source": source}}, stats=st,
                                     **kwargs_for(family)))
    assert torch.isfinite(out).all()
    assert len(st["steps"]) == 4 and all(s["reference_rows"] == 2 for s in st["steps"])


def test_more_denoiser_calls_per_step_than_the_protocol_is_refused() -> None:
    """A loop (a pipeline, or an option of one) that calls the denoiser more often within one scheduler step than
    its family's pipelines do would leave the extra calls unguided: the second call of a doubled-batch step is
    refused with the reason, not evaluated natively."""
    pipe = tiny_pipeline("sd")
    embeddings = torch.randn(4, 8, 32, generator=torch.Generator().manual_seed(0))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with guidance.attach(pipe, {"scale": 3.0}):
        pipe.scheduler.set_timesteps(4)
        t = pipe.scheduler.timesteps[0]
        with torch.no_grad():
            first = pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=embeddings).sample
            assert first.shape == (4, 4, 8, 8) and torch.isfinite(first).all()
            with pytest.raises(GuidanceError, match="called its denoiser 2 times within one scheduler step, where "
                                                    r"its family's pipelines call it 1 time\(s\)"):
                pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=embeddings)
