"""The guided combination of one step (`guidance.step.guided_step`), without any pipeline: random predictions in,
hand-written formulas (float64 numpy) to compare against (docs/CONVENTIONS.md §4, §5, §7, §16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import guidance
from guidance.step import StepPoint, TermInput, guided_step

B = 3
A, S = 0.6, 0.8  # x_t = a·x0 + s·n


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn((B, 4, 5, 5), generator=generator, dtype=torch.float64) for _ in range(3))


def point(prediction_type: str = "epsilon") -> StepPoint:
    return StepPoint(index=0, batch_size=B, a=A, s=S, prediction_type=prediction_type)


def spec(**fields) -> guidance.Guidance:
    loaded = guidance.load(fields)
    loaded.rule.reset()
    loaded.policy.reset(B, None)
    return loaded


def test_cfg_is_u_plus_w_times_the_difference() -> None:
    x, c, u = inputs()
    step = guided_step(spec(scale=3.0), point(), 3.0, x, c, u, range(B))
    np.testing.assert_allclose(step.prediction.numpy(), (u + 3.0 * (c - u)).numpy(), rtol=1e-12)
    assert torch.equal(step.reference, u)
    assert step.branches == ("cond", "reference") and step.reference_rows == B


def test_conditional_only_step_returns_the_conditional_prediction() -> None:
    x, c, _ = inputs()
    step = guided_step(spec(scale=3.0), point(), None, x, c, None, [])
    assert step.prediction is c and step.reference is None
    assert step.branches == ("cond",) and step.reference_rows == 0 and step.cosine is None


def test_samples_without_a_reference_keep_the_conditional_prediction() -> None:
    """AG has switched sample 1 off: its row is D_c, the others are guided; its reference is its guided output."""
    x, c, u = inputs(1)
    step = guided_step(spec(scale=4.0), point(), 4.0, x, c, u[[0, 2]], [0, 2])
    expected = c.clone()
    expected[[0, 2]] = u[[0, 2]] + 4.0 * (c[[0, 2]] - u[[0, 2]])
    np.testing.assert_allclose(step.prediction.numpy(), expected.numpy(), rtol=1e-12)
    assert torch.equal(step.reference[1], c[1]) and torch.equal(step.reference[[0, 2]], u[[0, 2]])
    assert step.reference_rows == 2 and step.cosine.shape == (2,)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "flow"])
def test_apg_works_on_x0_and_returns_the_prediction_type(prediction_type: str) -> None:
    """APG (η = 0, r = 1) computed by hand on x̂0 from the prediction type's own conversion, then converted back."""
    x, c, u = inputs(2)
    a, s = (1.0 - S, S) if prediction_type == "flow" else (A, S)
    to_x0 = {"epsilon": lambda o: (x - s * o) / a, "v_prediction": lambda o: a * x - s * o,
             "flow": lambda o: x - s * o}[prediction_type]
    from_x0 = {"epsilon": lambda d: (x - a * d) / s, "v_prediction": lambda d: (a * x - d) / s,
               "flow": lambda d: (x - d) / s}[prediction_type]
    x0_c, x0_u = to_x0(c).numpy(), to_x0(u).numpy()
    expected = np.empty_like(x0_c)
    for b in range(B):
        delta = (x0_c[b] - x0_u[b]).ravel()
        delta = delta * min(1.0, 1.0 / np.linalg.norm(delta))
        unit = x0_c[b].ravel() / np.linalg.norm(x0_c[b])
        orthogonal = delta - (delta @ unit) * unit
        expected[b] = (x0_c[b].ravel() + 6.0 * orthogonal).reshape(x0_c[b].shape)
    guidance_spec = spec(scale=7.0, rule={"name": "apg", "eta": 0.0, "norm_threshold": 1.0, "momentum": 0.0})
    step = guided_step(guidance_spec, StepPoint(0, B, a, s, prediction_type), 7.0, x, c, u, range(B))
    np.testing.assert_allclose(step.prediction.numpy(), from_x0(torch.tensor(expected)).numpy(), rtol=1e-9,
                               atol=1e-9)


def test_telemetry_is_the_cosine_and_distance_of_the_x0_estimates() -> None:
    x, c, u = inputs(3)
    step = guided_step(spec(scale=2.0), point(), 2.0, x, c, u, range(B))
    x0_c, x0_u = ((x - S * c) / A).flatten(1).numpy(), ((x - S * u) / A).flatten(1).numpy()
    cosine = (x0_c * x0_u).sum(1) / (np.linalg.norm(x0_c, axis=1) * np.linalg.norm(x0_u, axis=1))
    np.testing.assert_allclose(step.cosine.numpy(), cosine, rtol=1e-6)
    np.testing.assert_allclose(step.delta_norm.numpy(), np.linalg.norm(x0_c - x0_u, axis=1), rtol=1e-6)
    quiet = guided_step(spec(scale=2.0), point(), 2.0, x, c, u, range(B), telemetry=False)
    assert quiet.cosine is None and quiet.delta_norm is None
    assert torch.equal(quiet.prediction, step.prediction)


def test_rescale_matches_the_std_of_the_conditional_prediction() -> None:
    """diffusers' rescale_noise_cfg (Lin et al., Eq. 15–16) by hand: φ·g·std(c)/std(g) + (1 − φ)·g per sample."""
    x, c, u = inputs(4)
    g = (u + 5.0 * (c - u)).numpy()
    std = lambda t: t.reshape(B, -1).std(axis=1, ddof=1).reshape(B, 1, 1, 1)  # noqa: E731
    expected = 0.7 * g * std(c.numpy()) / std(g) + 0.3 * g
    step = guided_step(spec(scale=5.0, rescale=0.7), point(), 5.0, x, c, u, range(B))
    np.testing.assert_allclose(step.prediction.numpy(), expected, rtol=1e-10)


def test_adaptive_policy_switches_a_sample_off_after_its_cosine_passes_the_threshold() -> None:
    """AG (§5): the step where cos > γ̄ is still guided; the policy then stops asking for that sample's reference."""
    x, c, _ = inputs(5)
    u = c.clone()
    u[0] = -c[0]  # sample 0 disagrees (cos < 0), samples 1 and 2 agree exactly (cos = 1)
    guidance_spec = spec(scale=3.0, policy={"name": "adaptive", "threshold": 0.99})
    step = guided_step(guidance_spec, point(), 3.0, x, c, u, range(B))
    assert step.branches == ("cond", "reference")
    assert guidance_spec.policy.reference_samples(1) == [0]


@pytest.mark.parametrize("rule", ["cfg", "apg", "cfg_zero_star"])
def test_a_per_sample_scale_guides_each_sample_as_its_own_scale_would(rule: str) -> None:
    """w of shape (B,) (gfcg sets one per sample): sample b equals the step at the float w_b, also for the subset of
    samples a policy leaves guided and for a term's per-sample s."""
    x, c, u = inputs(4)
    w = torch.tensor([1.5, 3.0, 6.0], dtype=torch.float64)
    step = guided_step(spec(scale=3.0, rule=rule), point("v_prediction"), w, x, c, u[[0, 2]], [0, 2])
    for b in (0, 2):
        alone = guided_step(spec(scale=3.0, rule=rule), point("v_prediction"), float(w[b]), x, c, u[[0, 2]], [0, 2])
        np.testing.assert_allclose(step.prediction[b].numpy(), alone.prediction[b].numpy(), rtol=1e-10)
    assert torch.equal(step.prediction[1], c[1])
    term = guidance.load({"terms": [{"reference": {"name": "gfcg", "classifier": "digits"}, "scale": 1.0}]}).terms[0]
    s = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    with_term = guided_step(spec(scale=1.0), point(), None, x, c, None, [], terms=[TermInput(term, s, u)])
    expected = c + s.reshape(-1, 1, 1, 1) * (c - u)
    np.testing.assert_allclose(with_term.prediction.numpy(), expected.numpy(), rtol=1e-12)
