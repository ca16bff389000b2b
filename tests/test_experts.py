"""Two-expert pipelines (Wan 2.2: `transformer` above the boundary timestep, `transformer_2` below it): both experts
are guided, the schedule `experts` gives each its own scale exactly as the pipeline's guidance_scale and
guidance_scale_2 do (docs/CONVENTIONS.md §28), and the terms' perturbations reach both experts."""

from __future__ import annotations

import pytest
import torch

import guidance
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline
from guidance.pipelines.testing.tiny_more import tiny_wan_i2v

from conftest import first_layer, output_tensor, strip_scales

B = 2
N = 4


def kwargs(scale: float | None = None) -> dict:
    given = tiny_call_kwargs("wan22", batch=B, seed=1, num_inference_steps=N, guidance_scale=scale or 1.0)
    return given if scale is not None else strip_scales(given)


def per_expert_rows(pipe) -> tuple[list[int], list[int], list]:
    """Row counts of each expert's calls (pre-hooks on each first layer), from the pipeline's own point of view."""
    rows: tuple[list[int], list[int]] = ([], [])
    handles = [first_layer(pipe, expert).register_forward_pre_hook(lambda m, i, k=k: rows[k].append(i[0].shape[0]))
               for k, expert in enumerate((pipe.transformer, pipe.transformer_2))]
    return rows[0], rows[1], handles


def first_expert_steps(pipe) -> int:
    """How many steps run the first expert: t ≥ boundary_ratio·T, read from the scheduler after a native call."""
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    return int((pipe.scheduler.timesteps >= boundary).sum())


@pytest.mark.parametrize("variant", ["text-to-video", "image-to-video"])
def test_per_expert_scales_equal_native_guidance_scale_2(variant: str) -> None:
    """Wan 2.2 T2V and I2V (two experts, no image encoder; boundary 0.875 and 0.9)."""
    pipe, family = (tiny_pipeline("wan22"), "wan22") if variant == "text-to-video" else (
        tiny_wan_i2v(two_experts=True), "wan_i2v")

    def arguments() -> dict:  # fresh generators every call
        return tiny_call_kwargs(family, batch=B, seed=1, num_inference_steps=N, guidance_scale=4.5)

    expected = output_tensor(pipe(**arguments(), guidance_scale_2=2.0))
    first = first_expert_steps(pipe)
    assert 0 < first < N, "the tiny pipeline must run both experts"
    same_scale = output_tensor(pipe(**arguments()))
    stats: dict = {}
    spec = {"scale": 4.5, "schedule": {"name": "experts", "scale_2": 2.0}}
    got = output_tensor(guidance.run(pipe, spec, stats=stats, **strip_scales(arguments())))
    assert (got - expected).abs().max() <= 1e-5
    assert (got - same_scale).abs().max() > 1e-3, "scale_2 made no difference"
    assert [r["w"] for r in stats["steps"]] == [4.5] * first + [2.0] * (N - first)


def test_both_experts_run_their_own_steps_with_every_row() -> None:
    pipe = tiny_pipeline("wan22")
    first_rows, second_rows, handles = per_expert_rows(pipe)
    stats: dict = {}
    guidance.run(pipe, {"scale": 4.0}, stats=stats, **kwargs())
    for handle in handles:
        handle.remove()
    first = first_expert_steps(pipe)
    assert first_rows == [B, B] * first and second_rows == [B, B] * (N - first)
    assert stats["denoiser_rows"] == 2 * B * N and len(stats["steps"]) == N
    assert [r["denoiser_rows"] for r in stats["steps"]] == [2 * B] * N


def test_terms_perturb_both_experts() -> None:
    """An slg term skipping block 1 and a tsg term join each expert's conditional call; block 1 of each expert sees
    only the rows it is not skipped for, and each expert's time embedder is hooked."""
    pipe = tiny_pipeline("wan22")
    first_rows, second_rows, handles = per_expert_rows(pipe)
    seen: tuple[list[int], list[int]] = ([], [])
    for k, expert in enumerate((pipe.transformer, pipe.transformer_2)):
        handles.append(expert.blocks[1].attn1.register_forward_pre_hook(
            lambda m, i, kw, k=k: seen[k].append(kw.get("hidden_states", i[0] if i else None).shape[0]),
            with_kwargs=True))
    spec = {"scale": 4.0, "terms": [{"reference": {"name": "slg", "layers": [1]}, "scale": 2.0},
                                    {"reference": "tsg", "scale": 1.0}]}
    out = output_tensor(guidance.run(pipe, spec, **kwargs()))
    for handle in handles:
        handle.remove()
    first = first_expert_steps(pipe)
    assert first_rows == [B] * 4 * first and second_rows == [B] * 4 * (N - first)  # cond, slg, tsg, negative
    # each step's 4B rows enter the expert, but block 1 runs for the conditional, tsg and negative rows only
    assert sum(seen[0]) == 3 * B * first and sum(seen[1]) == 3 * B * (N - first)
    assert torch.isfinite(out).all()
    assert (out - output_tensor(guidance.run(pipe, {"scale": 4.0}, **kwargs()))).abs().max() > 1e-4


def test_term_schedule_per_expert_turns_the_second_experts_term_off() -> None:
    """On a term `experts` acts on 1 + s: scale_2 = 1 switches the term off on the second expert's steps (no rows)."""
    pipe = tiny_pipeline("wan22")
    first_rows, second_rows, handles = per_expert_rows(pipe)
    spec = {"scale": 4.0, "terms": [{"reference": {"name": "slg", "layers": [1]}, "scale": 2.0,
                                     "schedule": {"name": "experts", "scale_2": 1.0}}]}
    guidance.run(pipe, spec, **kwargs())
    for handle in handles:
        handle.remove()
    first = first_expert_steps(pipe)
    assert first_rows == [B] * 3 * first and second_rows == [B, B] * (N - first)


def test_explicit_boundary_on_a_one_expert_pipeline() -> None:
    """`boundary` (a ratio, like boundary_ratio) keys the scales on the timestep where the pipeline has none."""
    pipe = tiny_pipeline("wan")
    stats: dict = {}
    spec = {"scale": 5.0, "schedule": {"name": "experts", "scale_2": 2.0, "boundary": 0.9}}
    guidance.run(pipe, spec, stats=stats, **strip_scales(tiny_call_kwargs("wan", batch=B, num_inference_steps=N)))
    assert [r["w"] for r in stats["steps"]] == [5.0 if t >= 900 else 2.0 for t in pipe.scheduler.timesteps.tolist()]
    assert {r["w"] for r in stats["steps"]} == {5.0, 2.0}


@pytest.mark.parametrize(("family", "spec", "extra", "message"), [
    ("wan", {"schedule": {"name": "experts", "scale_2": 2.0}}, {}, "runs one denoiser"),
    ("wan22", {}, {"guidance_scale_2": 3.0}, "schedule: {name: experts, scale_2"),
    ("wan22", {"rule": "cfgpp", "scale": 0.6, "schedule": {"name": "experts", "scale_2": 0.5}}, {}, "no meaning for"),
])
def test_refusals_name_the_fix(family: str, spec: dict, extra: dict, message: str) -> None:
    pipe = tiny_pipeline(family)
    with pytest.raises(guidance.GuidanceError, match=message):
        guidance.run(pipe, {"scale": 4.0, **spec}, **strip_scales(tiny_call_kwargs(family, batch=1)), **extra)
