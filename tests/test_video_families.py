"""The video families (LTX-Video, HunyuanVideo, CogVideoX, AnimateDiff): guidance terms join the conditional rows of
their calls (HunyuanVideo, which runs its prompts as separate calls: calls of their own); what cannot work is refused
with the reason (LTX-2, CogVideoX's dynamic CFG, attention perturbations where the identity attention does not
fit)."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline, LTX2VideoTransformer3DModel

import guidance
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales

B = 2


def guided(pipe, family: str, spec: dict, **extra) -> torch.Tensor:
    return output_tensor(guidance.run(pipe, spec, **strip_scales(tiny_call_kwargs(family, batch=B)), **extra))


@pytest.mark.parametrize(("family", "calls"), [("ltx", [8]), ("cogvideox", [8]), ("hunyuanvideo", [2, 2, 2, 2])])
def test_skipped_blocks_and_time_perturbation_join_the_conditional_rows(family: str, calls: list[int],
                                                                         row_counter) -> None:
    """An slg term (block 1: for HunyuanVideo the single-stream block, whose streams come back hidden-first) and a
    tsg term: their B rows each join the call holding the conditional rows (HunyuanVideo: a call each, as its own
    calls hold one prompt's rows), and change the result."""
    pipe = tiny_pipeline(family)
    counter = row_counter(pipe)
    spec = {"scale": 4.0, "terms": [{"reference": {"name": "slg", "layers": [1]}, "scale": 2.0},
                                    {"reference": "tsg", "scale": 1.0}]}
    out = guided(pipe, family, spec)
    assert torch.isfinite(out).all()
    assert counter.calls == calls * 4
    assert (out - guided(pipe, family, {"scale": 4.0})).abs().max() > 1e-4


def test_animatediff_keeps_per_frame_embeddings_per_sample(row_counter) -> None:
    """AnimateDiff passes its prompt embeddings once per frame, guidance keeps them per sample: ICG's prompt bank
    (one embedding per prompt) replaces the reference samples' embeddings, and every step runs 2B sample rows."""
    pipe = tiny_pipeline("animatediff")
    counter = row_counter(pipe)
    kwargs = {k: v for k, v in strip_scales(tiny_call_kwargs("animatediff", batch=B)).items() if "embeds" not in k}
    kwargs |= {"prompt": ["cat", "owl"], "negative_prompt": ["blurry"] * B}  # prompts as long as the bank's

    def run(spec: dict) -> torch.Tensor:
        return output_tensor(guidance.run(pipe, spec, **kwargs))

    out = run({"scale": 3.0, "reference": {"name": "icg", "source": "prompt"}})
    assert torch.isfinite(out).all() and counter.calls == [2 * B] * 4
    assert (out - run({"scale": 3.0})).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["ltx", "hunyuanvideo", "cogvideox", "animatediff"])
@pytest.mark.parametrize("reference", [{"name": "pag", "layers": ["blocks.0"]}, {"name": "seg", "layers": ["attn1"]},
                                       {"name": "stg", "layers": [0], "mode": "attention"}])
def test_attention_perturbations_are_refused_with_the_reason(family: str, reference: dict) -> None:
    pipe = tiny_pipeline(family)
    with pytest.raises(guidance.GuidanceError, match=f"{reference['name']} cannot perturb the self-attention of "
                                                     f"{type(pipe).__name__}: .* Use .*(tsg|autoguidance)"):
        guided(pipe, family, {"scale": 3.0, "terms": [{"reference": reference, "scale": 1.0}]})


def test_animatediff_block_skipping_points_to_what_works() -> None:
    pipe = tiny_pipeline("animatediff")
    with pytest.raises(guidance.GuidanceError, match="no block list; use tsg, icg or autoguidance"):
        guided(pipe, "animatediff", {"scale": 3.0, "terms": [{"reference": "slg", "scale": 1.0}]})


def test_cogvideox_dynamic_cfg_is_refused() -> None:
    """use_dynamic_cfg rewrites the pipeline's scale after each transformer call: refused by guidance.run and, with
    attach, at the end of the first step."""
    pipe = tiny_pipeline("cogvideox")
    with pytest.raises(guidance.GuidanceError, match="drop use_dynamic_cfg"):
        guided(pipe, "cogvideox", {"scale": 3.0}, use_dynamic_cfg=True)
    with guidance.attach(pipe, {"scale": 3.0}), pytest.raises(guidance.GuidanceError, match="drop use_dynamic_cfg"):
        pipe(**tiny_call_kwargs("cogvideox", batch=B), use_dynamic_cfg=True)


def test_ltx2_is_refused_with_the_reason() -> None:
    torch.manual_seed(0)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=1, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, caption_channels=16)
    pipe = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, audio_vae=None, text_encoder=None,
                        tokenizer=None, connectors=None, transformer=transformer, vocoder=None)
    with pytest.raises(guidance.GuidanceError, match="video and audio .* Use LTX2Pipeline's own guidance"):
        guidance.attach(pipe, {"scale": 3.0})
