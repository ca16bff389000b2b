"""Each rule against a hand-written formula, alone and inside a full sampling loop."""

from __future__ import annotations

import itertools

import numpy as np
import torch

import guidance
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline
from guidance.rules import RULES, RuleStep

from reference_loops import ddim_guided, sd_call, sd_inputs


def apg_by_hand(c, u, w, eta, r, beta, running):
    """APG (Sadat et al. 2024, Alg. 1) in float64 numpy, one sample per row."""
    out, new_running = [], []
    for b in range(c.shape[0]):
        cb, delta = c[b].ravel(), (c[b] - u[b]).ravel()
        delta = delta + beta * running[b].ravel()
        new_running.append(delta.reshape(c[b].shape))
        if r is not None:
            delta = delta * min(1.0, r / np.linalg.norm(delta))
        parallel = delta @ cb / (cb @ cb) * cb
        out.append((cb + (w - 1) * (delta - parallel + eta * parallel)).reshape(c[b].shape))
    return np.stack(out), np.stack(new_running)


def test_apg_combine_matches_hand_formula_over_steps() -> None:
    rng = np.random.default_rng(0)
    rule = RULES.build({"name": "apg", "eta": 0.3, "norm_threshold": 2.0, "momentum": -0.5})
    rule.reset()
    running = np.zeros((3, 4, 5))
    for step in range(4):
        c, u = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
        expected, running = apg_by_hand(c, u, 6.0, 0.3, 2.0, -0.5, running)
        got = rule.combine(torch.tensor(c), torch.tensor(u), 6.0, RuleStep(step, slice(None), 3))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_apg_orthogonal_part_is_orthogonal_to_cond() -> None:
    rng = np.random.default_rng(1)
    c, u = torch.tensor(rng.normal(size=(2, 8))), torch.tensor(rng.normal(size=(2, 8)))
    rule = RULES.build({"name": "apg", "eta": 0.0, "norm_threshold": None, "momentum": 0.0})
    got = rule.combine(c, u, 3.0, RuleStep(0, slice(None), 2))
    orthogonal = (got - c) / 2.0  # D̂ − D_c = (w − 1)·Δ⊥ with η = 0
    assert torch.allclose((orthogonal * c).sum(dim=1), torch.zeros(2, dtype=c.dtype), atol=1e-12)


def test_apg_momentum_uses_only_its_samples_state() -> None:
    """Per-sample momentum: combining a subset (AG switched the others) reads and writes only those rows."""
    rng = np.random.default_rng(2)
    c, u = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    rule = RULES.build({"name": "apg", "eta": 1.0, "norm_threshold": None, "momentum": 0.5})
    rule.reset()
    rule.combine(torch.tensor(c), torch.tensor(u), 2.0, RuleStep(0, slice(None), 3))
    subset = torch.tensor([0, 2])
    got = rule.combine(torch.tensor(c[[0, 2]]), torch.tensor(u[[0, 2]]), 2.0, RuleStep(1, subset, 3))
    delta = c[[0, 2]] - u[[0, 2]]
    expected = c[[0, 2]] + (delta + 0.5 * delta)  # w − 1 = 1, η = 1: D_c + m with m = Δ + β·Δ
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_cfg_zero_star_combine_matches_hand_formula() -> None:
    rng = np.random.default_rng(3)
    c, u = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    rule = RULES.build("cfg_zero_star")
    got = rule.combine(torch.tensor(c), torch.tensor(u), 4.0, RuleStep(1, slice(None), 2)).numpy()
    for b in range(2):
        s_star = (c[b] * u[b]).sum() / ((u[b] ** 2).sum() + 1e-8)
        np.testing.assert_allclose(got[b], s_star * u[b] + 4.0 * (c[b] - s_star * u[b]), rtol=1e-12)
    assert rule.outputs_zero(0) and not rule.outputs_zero(1)


def test_apg_full_run_matches_direct_ddim_loop() -> None:
    """APG on x̂0 with momentum and norm clipping, through the plugin, equals a hand-written DDIM loop."""
    pipe = tiny_pipeline("sd")
    inputs = sd_inputs(pipe)
    w, eta, r, beta = 8.0, 0.0, 3.0, -0.5
    state = {"m": np.zeros((2, 4, 8, 8))}

    def guide(i, x, c, u, a, s):
        x0_c = ((x - s * c) / a).double().numpy()
        x0_u = ((x - s * u) / a).double().numpy()
        d, state["m"] = apg_by_hand(x0_c, x0_u, w, eta, r, beta, state["m"])
        return (x - a * torch.tensor(d, dtype=torch.float32)) / s

    expected = ddim_guided(pipe, inputs, 6, guide)
    spec = {"scale": w, "rule": {"name": "apg", "eta": eta, "norm_threshold": r, "momentum": beta}}
    got = guidance.run(pipe, spec, **sd_call(inputs, 6)).images
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    cfg = guidance.run(pipe, {"scale": w}, **sd_call(inputs, 6)).images
    assert (got - cfg).abs().max() > 1e-2


def test_cfg_zero_star_full_run_matches_direct_flow_loop() -> None:
    """CFG-Zero* on SD3: zero velocity at the first step, optimised scale s* afterwards."""
    pipe = tiny_pipeline("sd3")
    call = tiny_call_kwargs("sd3", batch=2, seed=4, num_inference_steps=5)
    call.pop("guidance_scale")
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(6))
    stats: dict = {}
    got = guidance.run(pipe, {"rule": "cfg_zero_star", "scale": 4.0}, stats=stats, latents=latents.clone(), **call)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(5)
    x = latents.clone()
    states = torch.cat([call["negative_prompt_embeds"], call["prompt_embeds"]])
    pooled = torch.cat([call["negative_pooled_prompt_embeds"], call["pooled_prompt_embeds"]])
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            sigma, sigma_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
            if i == 0:
                v = torch.zeros_like(x)
            else:
                out = pipe.transformer(hidden_states=torch.cat([x, x]), timestep=t.expand(4),
                                       encoder_hidden_states=states, pooled_projections=pooled).sample
                v_u, v_c = out.chunk(2)
                dims = (1, 2, 3)
                s_star = (v_c * v_u).sum(dim=dims, keepdim=True) / ((v_u**2).sum(dim=dims, keepdim=True) + 1e-8)
                v = s_star * v_u + 4.0 * (v_c - s_star * v_u)
            x = x + (sigma_next - sigma) * v
    assert torch.allclose(got.images, x, atol=1e-5, rtol=1e-5)
    assert stats["steps"][0]["denoiser_rows"] == 0 and stats["steps"][0]["branches"] == []


def test_rules_differ_and_stay_finite_on_every_step() -> None:
    """cfg, apg and cfg_zero_star at w = 5 on the same call: every latent finite, every step at w = 5, and every pair
    of rules gives clearly different latents (a rule that silently fell back to another would fail here)."""
    pipe = tiny_pipeline("sd")
    outputs = {}
    for rule in ("cfg", "apg", "cfg_zero_star"):
        kwargs = tiny_call_kwargs("sd", batch=2, seed=0)
        kwargs.pop("guidance_scale")
        stats: dict = {}
        outputs[rule] = guidance.run(pipe, {"rule": rule, "scale": 5.0}, stats=stats, **kwargs).images
        assert torch.isfinite(outputs[rule]).all()
        assert all(record["w"] == 5.0 for record in stats["steps"])
    for first, second in itertools.combinations(outputs, 2):
        assert (outputs[first] - outputs[second]).abs().max() > 1e-3, (first, second)
