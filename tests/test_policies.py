"""Policies: AG switches per sample and then skips the reference rows; LinearAG's fitted estimate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import guidance
from guidance.pipelines.schedulers import set_scheduler
from guidance.pipelines.testing.tiny import tiny_pipeline

from reference_loops import ddim_guided, sd_call, sd_inputs


def cosine(x: torch.Tensor, y: torch.Tensor) -> list[float]:
    x, y = x.double().flatten(1), y.double().flatten(1)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).tolist()


def test_adaptive_guidance_matches_hand_loop_and_skips_rows(row_counter) -> None:
    pipe = tiny_pipeline("sd")
    inputs = sd_inputs(pipe, batch=3)
    steps, w = 8, 6.0
    stats: dict = {}
    guidance.run(pipe, {"scale": w}, stats=stats, **sd_call(inputs, steps))
    cfg_cos = [record["cosine"][0] for record in stats["steps"]]
    k = next(i for i in range(1, steps) if cfg_cos[i] > max(cfg_cos[:i]))  # first step above all earlier ones
    threshold = (max(cfg_cos[:k]) + cfg_cos[k]) / 2

    switched = [False] * 3
    switch_steps: list[int | None] = [None] * 3
    expected_rows: list[int] = []

    def guide(i, x, c, u, a, s):
        expected_rows.append(3 + sum(not done for done in switched))
        eps = c.clone()
        live = [b for b in range(3) if not switched[b]]
        if live:
            eps[live] = u[live] + w * (c[live] - u[live])
            gammas = cosine((x[live] - s * c[live]) / a, (x[live] - s * u[live]) / a)
            for b, gamma in zip(live, gammas, strict=True):
                if gamma > threshold:
                    switched[b], switch_steps[b] = True, i
        return eps

    expected = ddim_guided(pipe, inputs, steps, guide)
    assert switch_steps[0] == k  # the test is meaningful: sample 0 switches mid-run
    counter = row_counter(pipe)
    stats = {}
    got = guidance.run(pipe, {"scale": w, "policy": {"name": "adaptive", "threshold": threshold}}, stats=stats,
                       **sd_call(inputs, steps)).images
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert counter.calls == expected_rows
    assert stats["denoiser_rows"] == sum(expected_rows)
    assert [r["reference_rows"] for r in stats["steps"]] == [n - 3 for n in expected_rows]


def test_adaptive_equals_cfg_until_the_switch() -> None:
    """Before any sample switches AG is CFG: with a threshold never reached the outputs are identical."""
    pipe = tiny_pipeline("sd")
    inputs = sd_inputs(pipe)
    cfg = guidance.run(pipe, {"scale": 4.0}, **sd_call(inputs, 5)).images
    ag = guidance.run(pipe, {"scale": 4.0, "policy": {"name": "adaptive", "threshold": 1.0}}, **sd_call(inputs, 5))
    assert torch.equal(ag.images, cfg)


@pytest.fixture
def fitted(tmp_path):
    pipe = tiny_pipeline("sd")
    inputs = sd_inputs(pipe, batch=3, seed=11)
    path = guidance.fit_linear_ag(pipe, {"scale": 5.0}, tmp_path / "coefficients.json", **sd_call(inputs, 8))
    return pipe, path


def test_linear_ag_coefficients_are_least_squares_of_cfg_trajectory(fitted) -> None:
    pipe, path = fitted
    record = json.loads(path.read_text())
    inputs = sd_inputs(pipe, batch=3, seed=11)
    outputs: list[torch.Tensor] = []
    handle = pipe.unet.register_forward_hook(lambda m, a, out: outputs.append(out[0].detach().double()))
    pipe(**sd_call(inputs, 8), guidance_scale=5.0)
    handle.remove()
    pairs = [out.chunk(2) for out in outputs]  # (u, c) per step
    modes = [entry["mode"] for entry in record["steps"]]
    assert modes == ["real", "estimate", "real", "estimate", "conditional", "conditional", "conditional",
                     "conditional"]
    for k, entry in enumerate(record["steps"]):
        if entry["mode"] != "estimate":
            continue
        (u_prev, c_prev), (u, c) = pairs[k - 1], pairs[k]
        x = np.stack([c.flatten().numpy(), c_prev.flatten().numpy(), u_prev.flatten().numpy()], axis=1)
        beta, *_ = np.linalg.lstsq(x, u.flatten().numpy(), rcond=None)
        np.testing.assert_allclose(entry["coefficients"], beta, rtol=1e-4, atol=1e-6)


def test_linear_ag_run_matches_hand_loop_and_saves_rows(fitted, row_counter) -> None:
    pipe, path = fitted
    record = json.loads(path.read_text())
    inputs = sd_inputs(pipe, batch=3, seed=12)
    history: dict = {}

    def guide(i, x, c, u, a, s):
        entry = record["steps"][i]
        if entry["mode"] == "conditional":
            reference = None
        elif entry["mode"] == "real":
            reference = u
        else:
            b0, b1, b2 = entry["coefficients"]
            reference = b0 * c + b1 * history["c"] + b2 * history["u"]
        history["c"], history["u"] = c, reference
        return c if reference is None else reference + 5.0 * (c - reference)

    expected = ddim_guided(pipe, inputs, 8, guide)
    counter = row_counter(pipe)
    stats: dict = {}
    spec = {"scale": 5.0, "policy": {"name": "linear_ag", "coefficients": str(path)}}
    got = guidance.run(pipe, spec, stats=stats, **sd_call(inputs, 8)).images
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert counter.calls == [6, 3, 6, 3, 3, 3, 3, 3]
    assert stats["denoiser_rows"] == 30  # 37.5 % fewer than CFG's 48
    assert [r["branches"][-1] for r in stats["steps"]] == ["reference", "estimate"] * 2 + ["cond"] * 4
    assert [r["reference_rows"] for r in stats["steps"]] == [3, 0, 3, 0, 0, 0, 0, 0]
    cfg = guidance.run(pipe, {"scale": 5.0}, **sd_call(inputs, 8)).images
    assert (got - cfg).abs().max() < (cfg - guidance.run(pipe, {"scale": 1.0}, **sd_call(inputs, 8)).images).abs().max()


def test_linear_ag_refuses_other_step_count_or_scheduler(fitted) -> None:
    pipe, path = fitted
    inputs = sd_inputs(pipe, seed=1)
    spec = {"scale": 5.0, "policy": {"name": "linear_ag", "coefficients": str(path)}}
    with pytest.raises(guidance.GuidanceError, match="8 steps"):
        guidance.run(pipe, spec, **sd_call(inputs, 6))
    set_scheduler(pipe, "euler")
    with pytest.raises(guidance.GuidanceError, match="EulerDiscreteScheduler"):
        guidance.run(pipe, spec, **sd_call(inputs, 8))


def test_unet_pair_reference_loop_sanity() -> None:
    """The hand loop's denoiser pair is the pipeline's own batch: CFG through it equals native CFG."""
    pipe = tiny_pipeline("sd")
    inputs = sd_inputs(pipe)
    expected = pipe(**sd_call(inputs, 4), guidance_scale=3.0).images
    got = ddim_guided(pipe, inputs, 4, lambda i, x, c, u, a, s: u + 3.0 * (c - u))
    assert torch.allclose(got, expected, atol=1e-5)


def test_linear_ag_keeps_its_own_copy_of_the_previous_step(tmp_path) -> None:
    """û_k uses c_{k−1} and u_{k−1} as observed: a separate-calls pipeline overwrites its conditional output with g in
    place after the step, which must not reach the estimate (Wan, Qwen-Image, Flux)."""
    from guidance.plan import StepTable
    from guidance.policies.linear_ag import ESTIMATE, FORMAT, REAL, LinearAG

    table = StepTable(timesteps=(900.0, 500.0), a=(0.3, 0.7), s=(0.95, 0.7), num_train_timesteps=1000,
                      prediction_type="epsilon", sampler="test")
    path = tmp_path / "coefficients.json"
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "sampler": "test", "num_inference_steps": 2,
                                "prediction_type": "epsilon",
                                "steps": [{"mode": REAL}, {"mode": ESTIMATE, "coefficients": [0.5, 2.0, 3.0]}]}))
    policy = LinearAG(coefficients=str(path))
    policy.reset(1, table)
    c, u = torch.full((1, 4), 1.0), torch.full((1, 4), 10.0)
    policy.observe(0, [0], c, u, None)
    c.fill_(-7.0)  # the pipeline's tensor now holds g
    u.fill_(-7.0)
    assert torch.equal(policy.estimate(1, torch.full((1, 4), 4.0)), torch.full((1, 4), 0.5 * 4 + 2.0 * 1 + 3.0 * 10))


def test_linear_ag_is_fitted_with_the_specs_terms(tmp_path) -> None:
    """The fit runs the spec it will be used with: a term changes the recorded trajectory, so the coefficients."""
    pipe = tiny_pipeline("sd")
    inputs = sd_inputs(pipe, batch=2, seed=3)
    plain = guidance.fit_linear_ag(pipe, {"scale": 5.0}, tmp_path / "plain.json", **sd_call(inputs, 6))
    spec = {"scale": 5.0, "terms": [{"reference": "tsg", "scale": 2.0}]}
    with_term = guidance.fit_linear_ag(pipe, spec, tmp_path / "term.json", **sd_call(inputs, 6))
    coefficients = [[e.get("coefficients") for e in json.loads(p.read_text())["steps"]] for p in (plain, with_term)]
    assert coefficients[0] != coefficients[1]
    assert json.loads(with_term.read_text())["fitted_on"]["guidance"]["terms"]
