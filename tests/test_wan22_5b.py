"""Wan 2.2 TI2V-5B (`expand_timesteps`): one time per token. The step is located from the noisy tokens' time (the
image-to-video first frame's tokens have time 0), and TSG perturbs a per-token time embedding with one noise per
sample."""

from __future__ import annotations

import pytest
import torch

import guidance
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import strip_scales


@pytest.mark.parametrize("family", ["wan22_5b", "wan22_5b_i2v"])
def test_steps_are_located_from_the_noisy_tokens(family: str) -> None:
    pipe = tiny_pipeline(family)
    stats: dict = {}
    guidance.run(pipe, {"scale": 4.0}, stats=stats, **strip_scales(tiny_call_kwargs(family, batch=2)))
    assert [record["step"] for record in stats["steps"]] == [0, 1, 2, 3]
    assert [record["t"] for record in stats["steps"]] == pytest.approx(pipe.scheduler.timesteps.tolist())


@pytest.mark.parametrize("family", ["wan22_5b", "wan22_5b_i2v"])
def test_tsg_adds_one_noise_per_sample_to_every_token(family: str) -> None:
    """The reference rows' per-token time embedding minus the conditional rows' is the same on every token (the first
    frame's tokens, at time 0, included) and differs between samples."""
    pipe = tiny_pipeline(family)
    embedder = pipe.transformer.condition_embedder.time_embedder
    seen: list[torch.Tensor] = []
    with guidance.attach(pipe, {"scale": 3.0, "reference": "tsg"}):
        handle = embedder.register_forward_hook(lambda module, inputs, output: seen.append(output.detach().clone()))
        try:
            pipe(**tiny_call_kwargs(family, batch=2, guidance_scale=2.0))
        finally:
            handle.remove()
    for cond, reference in zip(seen[::2], seen[1::2], strict=True):  # the reference rows run in their own call
        assert cond.shape[:2] == reference.shape[:2] == (2, 6)  # 6 tokens
        if family.endswith("i2v"):
            assert (cond[:, 0] - cond[:, -1]).abs().max() > 1e-4  # time 0 and the step's time differ
        delta = reference - cond
        assert (delta - delta[:, :1]).abs().max() <= 1e-6
        assert (delta[0, 0] - delta[1, 0]).abs().max() > 1e-4
