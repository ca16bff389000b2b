"""guidance's `cfg` reproduces each pipeline's own native classifier-free guidance."""

from __future__ import annotations

import pytest
import torch

import guidance
from guidance.pipelines.testing.tiny import FAMILIES, tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales


def native(pipe, family: str, scale: float, **extra) -> torch.Tensor:
    return output_tensor(pipe(**tiny_call_kwargs(family, batch=2, seed=1, guidance_scale=scale), **extra))


@pytest.mark.parametrize("family", FAMILIES)
def test_cfg_equals_native_cfg(family: str) -> None:
    pipe = tiny_pipeline(family)
    expected = native(pipe, family, 4.5)
    kwargs = strip_scales(tiny_call_kwargs(family, batch=2, seed=1))
    got = output_tensor(guidance.run(pipe, {"rule": "cfg", "scale": 4.5}, **kwargs))
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["sd", "sd3", "dit"])
def test_attach_with_any_pipeline_scale_equals_native(family: str) -> None:
    """With attach the caller's guidance_scale only switches CFG batching on; the spec sets the strength."""
    pipe = tiny_pipeline(family)
    expected = native(pipe, family, 6.0)
    kwargs = tiny_call_kwargs(family, batch=2, seed=1, guidance_scale=2.0)
    with guidance.attach(pipe, {"scale": 6.0}) as session:
        if "callback_on_step_end" in type(pipe).__call__.__code__.co_varnames:
            kwargs["callback_on_step_end"] = session.callback
        got = output_tensor(pipe(**kwargs))
    assert (got - expected).abs().max() <= 1e-5
    assert len(session.stats["steps"]) == 4


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_rescale_equals_native_guidance_rescale(family: str) -> None:
    pipe = tiny_pipeline(family)
    expected = native(pipe, family, 7.0, guidance_rescale=0.7)
    plain = native(pipe, family, 7.0)
    kwargs = strip_scales(tiny_call_kwargs(family, batch=2, seed=1))
    got = output_tensor(guidance.run(pipe, {"scale": 7.0, "rescale": 0.7}, **kwargs))
    assert (got - expected).abs().max() <= 1e-5
    assert (plain - expected).abs().max() > 1e-3  # the rescale did something


@pytest.mark.parametrize("family", ["sd", "sd3", "sd35", "pixart", "dit", "flux", "wan", "wan22", "wan_i2v",
                                    "qwenimage", "sana", "hidream"])
def test_apg_reduces_to_cfg(family: str) -> None:
    """APG with η = 1, r = ∞, β = 0 is CFG at the same w (computed on x̂0, so up to float32 rounding)."""
    pipe = tiny_pipeline(family)
    expected = native(pipe, family, 5.0)
    kwargs = strip_scales(tiny_call_kwargs(family, batch=2, seed=1))
    spec = {"scale": 5.0, "rule": {"name": "apg", "eta": 1.0, "norm_threshold": None, "momentum": 0.0}}
    got = output_tensor(guidance.run(pipe, spec, **kwargs))
    assert torch.allclose(got, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["sd", "dit", "flux", "wan", "wan22", "wan_i2v", "qwenimage"])
def test_scale_one_is_conditional_only(family: str) -> None:
    """w = 1 returns D_c: the same as native sampling without guidance (guidance_scale 1 / no true CFG)."""
    pipe = tiny_pipeline(family)
    expected = native(pipe, family, 1.0)
    kwargs = strip_scales(tiny_call_kwargs(family, batch=2, seed=1))
    stats: dict = {}
    got = output_tensor(guidance.run(pipe, {"scale": 1.0}, stats=stats, **kwargs))
    assert (got - expected).abs().max() <= 1e-5
    assert stats["denoiser_rows"] == 2 * 4


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_callback_records_each_steps_latent_rms(family: str) -> None:
    """session.callback (added by guidance.run after a user's own step-end callback) records the RMS of each sample's
    latents after every step: the values a user's callback sees, computed by hand."""
    pipe = tiny_pipeline(family)
    seen: list[torch.Tensor] = []

    def mine(pipeline, step, timestep, callback_kwargs):
        seen.append(callback_kwargs["latents"].detach().clone())
        return callback_kwargs

    kwargs = strip_scales(tiny_call_kwargs(family, batch=2, seed=1))
    stats: dict = {}
    guidance.run(pipe, {"scale": 4.0}, stats=stats, callback_on_step_end=mine, **kwargs)
    assert len(seen) == len(stats["steps"]) == 4
    for latents, record in zip(seen, stats["steps"], strict=True):
        by_hand = latents.flatten(1).pow(2).mean(1).sqrt()
        assert torch.allclose(torch.tensor(record["latent_rms"]), by_hand, rtol=1e-5)
    assert stats["steps"][0]["latent_rms"] != stats["steps"][-1]["latent_rms"]
