"""`tcfg` and `fdg` against their papers' formulas (numpy's SVD, kornia's Laplacian pyramid) and against diffusers'
own TangentialClassifierFreeGuidance and FrequencyDecoupledGuidance guiders on the same tensors: alone, and on every
step of real runs of tiny pipelines (ε, learned variance, flow), with schedules, policies, references and terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import guidance
from guidance.errors import GuidanceError
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline
from guidance.rules import RULES, RuleStep
from guidance.rules.fdg import collapse, laplacian_pyramid

from conftest import output_tensor, strip_scales
from test_families import FACTS, Recorder, coefficients, from_x0, input_of, native, to_x0

kornia = pytest.importorskip("kornia")
guiders = pytest.importorskip("diffusers.guiders")

B, N = 2, 4
FAMILIES = ("sd", "pixart", "dit", "sd3")  # ε; ε with learned variance ([uncond; cond] and [cond; uncond]); flow


def pair(seed: int, shape: tuple[int, ...] = (3, 4, 8, 8), dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype), torch.randn(shape, generator=generator, dtype=dtype)


def combine(spec, c: torch.Tensor, u: torch.Tensor, w: float, base: float | None = None) -> torch.Tensor:
    return RULES.build(spec).combine(c, u, w, RuleStep(0, slice(None), c.shape[0], base))


# --- tcfg -------------------------------------------------------------------------------------------------------

def tcfg_by_svd(c: np.ndarray, u: np.ndarray, w: float) -> np.ndarray:
    """The paper's Algorithm 1 in float64 numpy: SVD of [c; u], u projected on the first right singular vector."""
    out = []
    for cb, ub in zip(c, u, strict=True):
        _, _, vh = np.linalg.svd(np.stack([cb.ravel(), ub.ravel()]), full_matrices=False)
        damped = (ub.ravel() @ vh[0]) * vh[0]
        out.append((damped + w * (cb.ravel() - damped)).reshape(cb.shape))
    return np.stack(out)


def test_tcfg_equals_the_svd_of_the_paper() -> None:
    c, u = pair(0, dtype=torch.float64)
    got = combine("tcfg", c, u, 6.0).numpy()
    np.testing.assert_allclose(got, tcfg_by_svd(c.numpy(), u.numpy(), 6.0), rtol=1e-9, atol=1e-9)
    cfg = (u + 6.0 * (c - u)).numpy()
    assert np.abs(got - cfg).max() > 1.0  # the damping changes the step


def test_tcfg_equals_diffusers_guider() -> None:
    from diffusers.guiders.tangential_classifier_free_guidance import TangentialClassifierFreeGuidance
    c, u = pair(1)
    expected = TangentialClassifierFreeGuidance(guidance_scale=4.5).forward(c, u).pred
    got = combine("tcfg", c, u, 4.5)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_tcfg_degenerate_pairs() -> None:
    """c ∥ u: v₁ is their direction and u is kept (CFG); c = u: c; c ⟂ u with equal norms (no leading direction) and
    all zeros: u is kept; c ⟂ u with ‖u‖ < ‖c‖: u is damped to 0 (the step is w·c)."""
    c = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    u = torch.tensor([[2.0, 4.0, 6.0], [1.0, 2.0, 3.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    got = combine("tcfg", c, u, 3.0)
    cfg = u + 3.0 * (c - u)
    assert torch.allclose(got[:4], cfg[:4], atol=1e-6)
    assert torch.allclose(got[4], 3.0 * c[4], atol=1e-6)


# --- fdg --------------------------------------------------------------------------------------------------------

def fdg_by_hand(c: torch.Tensor, u: torch.Tensor, w_high: float, w_low: float, eta: float, levels: int) -> torch.Tensor:
    """The paper's update on kornia's Laplacian pyramid (float64): D_c + (w_l − 1)·(Δ⊥ + η·Δ∥) per level."""
    from kornia.geometry import pyrup
    from kornia.geometry.transform import build_laplacian_pyramid
    guided = []
    for level, (lc, lu) in enumerate(zip(build_laplacian_pyramid(c.double(), levels),
                                         build_laplacian_pyramid(u.double(), levels), strict=True)):
        delta, flat = (lc - lu).flatten(1), lc.flatten(1)
        parallel = ((delta * flat).sum(1, keepdim=True) / (flat * flat).sum(1, keepdim=True)) * flat
        delta = delta - parallel + eta * parallel
        w = w_low if level == levels - 1 else w_high
        guided.append(lc + (w - 1.0) * delta.view_as(lc))
    image = guided[-1]
    for band in reversed(guided[:-1]):
        image = pyrup(image) + band
    return image


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (2, 3, 16, 12), (1, 2, 32, 32), (2, 4, 64, 96)])
@pytest.mark.parametrize("levels", [2, 3, 4])
def test_pyramid_equals_kornias_and_collapses_exactly(shape, levels) -> None:
    if min(shape[-2:]) < 3 * 2 ** (levels - 2):
        pytest.skip("the grid is too small for that many levels (the rule refuses it)")
    x, _ = pair(2, shape)
    ours = laplacian_pyramid(x, levels)
    assert torch.allclose(collapse(ours), x, atol=1e-5)
    h, w = shape[-2:]
    if h % 2 ** (levels - 1) or w % 2 ** (levels - 1) or not (h & (h - 1) == 0 or w & (w - 1) == 0):
        return  # kornia pads this grid to powers of two (test_pyramid_takes_any_grid)
    theirs = kornia.geometry.transform.build_laplacian_pyramid(x, levels)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.shape == reference.shape and torch.allclose(mine, reference, atol=1e-6)


def test_pyramid_takes_any_grid() -> None:
    """Odd and non-power-of-two sides, where kornia pads (and diffusers' guider returns the padded size)."""
    x, _ = pair(3, (2, 4, 13, 10))
    pyramid = laplacian_pyramid(x, 3)
    assert [tuple(level.shape[-2:]) for level in pyramid] == [(13, 10), (6, 5), (3, 2)]
    assert torch.allclose(collapse(pyramid), x, atol=1e-5)
    c, u = pair(4, (2, 4, 24, 20))
    got = combine({"name": "fdg", "low_scale": 6.0}, c, u, 6.0)  # one scale on every level: CFG
    assert torch.allclose(got, u + 6.0 * (c - u), atol=1e-4)


@pytest.mark.parametrize("eta", [1.0, 0.0, 0.4])
@pytest.mark.parametrize("levels", [2, 3])
def test_fdg_equals_the_hand_formula(eta, levels) -> None:
    c, u = pair(5, (3, 4, 16, 16))
    got = combine({"name": "fdg", "low_scale": 2.5, "levels": levels, "eta": eta}, c, u, 9.0)
    expected = fdg_by_hand(c, u, 9.0, 2.5, eta, levels)
    assert torch.allclose(got.double(), expected, atol=1e-4)
    assert float((got - (u + 9.0 * (c - u))).abs().max()) > 1.0


def test_fdg_equals_diffusers_guider() -> None:
    """Without projection on the raw tensors (diffusers' default formulation); with η < 1 the paper's D_c + (w − 1)·Δ
    is diffusers' use_original_formulation with scales w − 1."""
    c, u = pair(6, (3, 4, 16, 16))
    plain = guiders.FrequencyDecoupledGuidance(guidance_scales=[10.0, 10.0, 5.0]).forward(c, u).pred
    assert torch.allclose(combine({"name": "fdg", "low_scale": 5.0, "levels": 3}, c, u, 10.0), plain, atol=1e-4)
    projected = guiders.FrequencyDecoupledGuidance(guidance_scales=[9.0, 4.0], parallel_weights=0.25,
                                                   use_original_formulation=True).forward(c, u).pred
    assert torch.allclose(combine({"name": "fdg", "low_scale": 5.0, "eta": 0.25}, c, u, 10.0), projected, atol=1e-4)
    diffusers_default = guiders.FrequencyDecoupledGuidance(guidance_scales=[10.0, 5.0], parallel_weights=0.25)
    assert float((diffusers_default.forward(c, u).pred - projected).abs().max()) > 1e-2  # they do differ there


def test_fdg_schedule_scales_both_bands() -> None:
    """At a scheduled step w_i, both bands' w − 1 scale by f_i = (w_i − 1)/(w − 1) (a term: w = 1 + s)."""
    c, u = pair(7, (2, 4, 16, 16))
    got = combine({"name": "fdg", "low_scale": 3.0}, c, u, 4.5, base=8.0)
    assert torch.allclose(got.double(), fdg_by_hand(c, u, 4.5, 1.0 + 2.0 * 3.5 / 7.0, 1.0, 2), atol=1e-4)


def test_fdg_refusals_name_the_problem_and_the_fix() -> None:
    with pytest.raises(GuidanceError, match="conditional only.*low_scale 5.0 would never act.*above 1"):
        guidance.load({"rule": "fdg", "scale": 1})
    rule = RULES.build({"name": "fdg", "levels": 4})
    with pytest.raises(GuidanceError, match=r"at least 12.*shape \(2, 4, 8, 8\).*fewer levels"):
        rule.combine(*pair(8, (2, 4, 8, 8)), 5.0, RuleStep(0, slice(None), 2, 5.0))
    with pytest.raises(GuidanceError, match=r"shape \(2, 16, 4\).*packed token sequences"):
        rule.combine(*pair(8, (2, 16, 4)), 5.0, RuleStep(0, slice(None), 2, 5.0))


def test_fdg_on_packed_flux_latents_is_refused_through_run() -> None:
    pipe = tiny_pipeline("flux")
    with pytest.raises(GuidanceError, match="fdg splits a .*packed token sequences"):
        guidance.run(pipe, {"rule": "fdg"}, **strip_scales(tiny_call_kwargs("flux", batch=1, num_inference_steps=2)))


# --- in real runs -----------------------------------------------------------------------------------------------

def replay(family: str, spec: dict, check) -> list[dict]:
    """Run `spec` on the family's tiny pipeline and call check(k, cond, uncond, x, a, s, got) with the native
    predictions of every step and the prediction handed to the scheduler (prediction channels only); the stats."""
    facts = FACTS[family]
    pipe = tiny_pipeline(family)
    recorder = Recorder(pipe)
    stats: dict = {}
    guidance.run(pipe, spec, stats=stats,
                 **strip_scales(tiny_call_kwargs(family, batch=B, seed=3, num_inference_steps=N)))
    recorder.close()
    groups = recorder.per_step()
    assert len(groups) == N
    for k, (calls, (guided, _)) in enumerate(zip(groups, recorder.steps, strict=True)):
        assert len(calls) == 1
        first, second = native(calls[0]).chunk(2)
        cond, uncond = (first, second) if facts.cond_first else (second, first)
        x, timestep = input_of(calls[0])
        x = x.chunk(2)[0 if facts.cond_first else 1]
        got = guided[:B].double()
        if facts.channels:
            cond, uncond, got = cond[:, :facts.channels], uncond[:, :facts.channels], got[:, :facts.channels]
        a, s = coefficients(pipe, facts, k, timestep)
        check(k, cond, uncond, x, a, s, got)
    return stats["steps"]


def close_in_x0(family: str, got, expected, x, a, s, what: str) -> None:
    """Compared as x̂0: the output space divides float32 rounding by s (ε at the last step)."""
    facts = FACTS[family]
    x0_got, x0_expected = to_x0(facts, got, x, a, s), to_x0(facts, expected, x, a, s)
    error = float((x0_got - x0_expected).abs().max())
    assert error <= 1e-4 * float(x0_expected.abs().max()) + 1e-5, f"{what}: x̂0 is {error} from the reference"


@pytest.mark.parametrize("family", FAMILIES)
def test_tcfg_run_equals_diffusers_guider_on_every_step(family: str) -> None:
    from diffusers.guiders.tangential_classifier_free_guidance import TangentialClassifierFreeGuidance
    guider = TangentialClassifierFreeGuidance(guidance_scale=5.0)

    def check(k, cond, uncond, x, a, s, got):
        expected = guider.forward(cond.float(), uncond.float()).pred.double()
        close_in_x0(family, got, expected, x, a, s, f"{family} step {k}")
        assert float((got - (uncond + 5.0 * (cond - uncond))).abs().max()) > 1e-4, "tcfg did nothing here"

    replay(family, {"rule": "tcfg", "scale": 5.0}, check)


@pytest.mark.parametrize("family", FAMILIES)
def test_fdg_run_equals_diffusers_guider_on_every_step(family: str) -> None:
    """η = 1 on the raw predictions (any space); η = 0.5 on x̂0 (diffusers' original formulation, scales w − 1)."""
    plain = guiders.FrequencyDecoupledGuidance(guidance_scales=[8.0, 3.0])
    projected = guiders.FrequencyDecoupledGuidance(guidance_scales=[7.0, 2.0], parallel_weights=0.5,
                                                   use_original_formulation=True)
    facts = FACTS[family]

    def check_plain(k, cond, uncond, x, a, s, got):
        expected = plain.forward(cond, uncond).pred
        close_in_x0(family, got, expected, x, a, s, f"{family} step {k}")
        assert float((got - (uncond + 8.0 * (cond - uncond))).abs().max()) > 1e-4, "fdg is cfg here"

    def check_projected(k, cond, uncond, x, a, s, got):
        x0 = projected.forward(to_x0(facts, cond, x, a, s), to_x0(facts, uncond, x, a, s)).pred
        close_in_x0(family, got, from_x0(facts, x0, x, a, s), x, a, s, f"{family} step {k}")

    replay(family, {"rule": {"name": "fdg", "low_scale": 3.0}, "scale": 8.0}, check_plain)
    replay(family, {"rule": {"name": "fdg", "low_scale": 3.0, "eta": 0.5}, "scale": 8.0}, check_projected)


def test_fdg_run_with_a_schedule_scales_both_bands() -> None:
    """A linear schedule on SD: at step k both bands' w − 1 follow w_k, the step's scale in the telemetry."""
    expected_by_step = {}

    def check(k, cond, uncond, x, a, s, got):
        expected_by_step[k] = (cond, uncond, x, a, s, got)

    steps = replay("sd", {"rule": {"name": "fdg", "low_scale": 3.0}, "scale": 9.0, "schedule": "linear"}, check)
    for k, (cond, uncond, x, a, s, got) in expected_by_step.items():
        w = steps[k]["w"]
        if w == 1.0:
            continue
        expected = fdg_by_hand(cond, uncond, w, 1.0 + 2.0 * (w - 1.0) / 8.0, 1.0, 2)
        close_in_x0("sd", got, expected, x, a, s, f"step {k}")
    assert len({round(record["w"], 6) for record in steps}) == N


@pytest.mark.parametrize("family", ["sd", "sd3", "pixart"])
@pytest.mark.parametrize("extra", [
    {"policy": {"name": "adaptive", "threshold": 0.5}},
    {"reference": "icg"},
    {"reference": "tsg"},
    {"terms": [{"reference": "pag", "scale": 2.0}]},
    {"terms": [{"reference": "pag", "scale": 2.0, "rule": "tcfg"}]},
    {"terms": [{"reference": "seg", "scale": 2.0, "rule": {"name": "fdg", "low_scale": 1.5}}]},
    {"rescale": 0.7},
], ids=["adaptive", "icg", "tsg", "pag-term", "pag-tcfg-term", "seg-fdg-term", "rescale"])
def test_tcfg_and_fdg_compose_with_the_other_axes(family: str, extra: dict) -> None:
    """Each combination runs, stays finite and differs from the same spec with cfg."""
    outputs = {}
    for rule in ("cfg", "tcfg", {"name": "fdg", "low_scale": 2.0}):
        kwargs = strip_scales(tiny_call_kwargs(family, batch=B, seed=1, num_inference_steps=3))  # a fresh generator
        out = output_tensor(guidance.run(tiny_pipeline(family), {"scale": 6.0, "rule": rule, **extra}, **kwargs))
        assert torch.isfinite(out).all()
        outputs[str(rule)] = out
    cfg = outputs.pop("cfg")
    for name, out in outputs.items():
        assert float((out - cfg).abs().max()) > 1e-4, name
