"""Family facts of the Flux variants and their relatives that the family-parametrized tests do not cover: the
guidance-distilled FLUX.2 pipelines (no negative branch: `uncond` refused, references built from the conditional call
work, checked by hand against a weaker model), Lumina 2's own CFG settings, Chroma's and FLUX.2's single-stream
blocks under slg."""

from __future__ import annotations

import functools

import pytest
import torch

import guidance
from guidance.pipelines.testing.tiny import DISTILLED, tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales


def call(family: str, **extra) -> dict:
    return strip_scales(tiny_call_kwargs(family, batch=2, seed=1)) | extra


@pytest.mark.parametrize("family", DISTILLED)
def test_distilled_families_refuse_uncond_with_the_fix(family: str) -> None:
    pipe = tiny_pipeline(family)
    with pytest.raises(guidance.GuidanceError, match="guidance-distilled: it makes no negative-prompt call.*slg"):
        guidance.run(pipe, {"scale": 3.0}, **call(family))
    with pytest.raises(guidance.GuidanceError, match="guidance-distilled"):
        guidance.attach(pipe, {"scale": 3.0, "rule": "apg"})


@pytest.mark.parametrize("family", DISTILLED)
@pytest.mark.parametrize("reference", [{"name": "slg", "layers": [1]}, "tsg", "icg"])
def test_distilled_families_take_references_from_the_conditional_call(family: str, reference, row_counter) -> None:
    """The conditional rows and the reference's run in transformer calls of their own (B rows each, as the pipeline's
    own call: peak memory stays the pipeline's); the result is guided."""
    pipe = tiny_pipeline(family)
    native = output_tensor(pipe(**call(family)))
    counter = row_counter(pipe)
    got = output_tensor(guidance.run(pipe, {"scale": 3.0, "reference": reference}, **call(family)))
    assert counter.calls == [2, 2] * 4
    assert torch.isfinite(got).all() and (got - native).abs().max() > 1e-4


@pytest.mark.parametrize("family", DISTILLED)
def test_distilled_apg_against_a_weaker_model_by_hand(family: str) -> None:
    """APG (η = 0) with autoguidance as the main reference on a guidance-distilled FLUX.2: flow matching at the
    scheduler's σ (the transformer gets timestep/1000), x̂0 = x − σ·v, by hand from the two networks' outputs on the
    very inputs the pipeline passed, equals what guidance hands the scheduler."""
    pipe = tiny_pipeline(family)
    weak = tiny_pipeline(family, seed=1).transformer
    calls, steps = [], []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, k: calls.append(dict(k)), with_kwargs=True)
    step = pipe.scheduler.step

    @functools.wraps(step)
    def recorded(model_output, *args, **kwargs):
        steps.append(model_output.detach().clone().double())
        return step(model_output, *args, **kwargs)

    pipe.scheduler.step = recorded
    w = 4.0
    spec = {"scale": w, "reference": {"name": "autoguidance", "model": weak},
            "rule": {"name": "apg", "eta": 0.0, "norm_threshold": None, "momentum": 0.0}}
    guidance.run(pipe, spec, **call(family))
    handle.remove()
    del pipe.scheduler.step
    assert len(calls) == len(steps) == 4
    for k, (kwargs, got) in enumerate(zip(calls, steps, strict=True)):
        kwargs = {**kwargs, "return_dict": False}
        with torch.no_grad():
            c, u = (net(**kwargs)[0].double() for net in (pipe.transformer, weak))
        x, sigma = kwargs["hidden_states"].double(), float(pipe.scheduler.sigmas[k])
        assert float(kwargs["timestep"][0]) * 1000 == pytest.approx(float(pipe.scheduler.timesteps[k]), rel=1e-5)
        x0_c, x0_u = x - sigma * c, x - sigma * u
        delta, flat = (x0_c - x0_u).flatten(1), x0_c.flatten(1)
        parallel = ((delta * flat).sum(1, keepdim=True) / (flat * flat).sum(1, keepdim=True)) * flat
        expected = (x - (x0_c + (w - 1) * (delta - parallel).view_as(x0_c))) / sigma
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max() + 1e-5, f"step {k}"
        assert (got - (u + w * (c - u))).abs().max() > 1e-3, "APG equals CFG here: the check cannot tell them apart"


def test_lumina2_without_cfg_normalization_equals_native() -> None:
    """guidance.run reads Lumina 2's cfg_normalization: off, cfg is the plain combination the pipeline then makes."""
    pipe = tiny_pipeline("lumina2")
    plain = output_tensor(pipe(**call("lumina2", guidance_scale=4.0, cfg_normalization=False)))
    normalised = output_tensor(pipe(**call("lumina2", guidance_scale=4.0)))
    got = output_tensor(guidance.run(pipe, {"scale": 4.0}, **call("lumina2", cfg_normalization=False)))
    assert (got - plain).abs().max() <= 1e-5
    assert (plain - normalised).abs().max() > 1e-3


def test_lumina2_cfg_truncation_is_refused_with_the_fix() -> None:
    pipe = tiny_pipeline("lumina2")
    with pytest.raises(guidance.GuidanceError, match="cfg_trunc_ratio < 1 drops the negative-prompt call.*schedule"):
        guidance.run(pipe, {"scale": 4.0}, **call("lumina2", cfg_trunc_ratio=0.5))
    out = guidance.run(pipe, {"scale": 4.0, "reference": "tsg"}, **call("lumina2", cfg_trunc_ratio=0.5))
    assert torch.isfinite(output_tensor(out)).all()  # a reference from the conditional call needs no negative call


@pytest.mark.parametrize("family", ["chroma", "flux2_klein", "flux2"])
def test_single_stream_blocks_pass_one_stream(family: str) -> None:
    """slg on the single-stream block (index 1: after the one double block) of Chroma and FLUX.2, whose single
    blocks take and return one stream, against skipping the double block (both streams)."""
    pipe = tiny_pipeline(family)
    w = 1.0 if family in DISTILLED else 3.0

    def with_skipped(layer: int) -> torch.Tensor:
        spec = {"scale": w, "terms": [{"reference": {"name": "slg", "layers": [layer]}, "scale": 2.0}]}
        return output_tensor(guidance.run(pipe, spec, **call(family)))

    base = output_tensor(guidance.run(pipe, {"scale": w}, **call(family)))
    single, double = with_skipped(1), with_skipped(0)
    assert torch.isfinite(single).all() and torch.isfinite(double).all()
    assert (single - base).abs().max() > 1e-4 and (single - double).abs().max() > 1e-4
