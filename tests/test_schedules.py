"""CFG weight schedules (docs/CONVENTIONS.md §1–4), checked against formulas written
out here from the spec, first on bare StepTables, then end to end on the tiny SD pipeline (telemetry, rows evaluated
and the latents of an independent hand-written DDIM loop)."""

from __future__ import annotations

import math

import pytest
import torch

import guidance
from guidance.pipelines.schedulers import set_scheduler
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline
from guidance.plan import StepTable
from guidance.schedules import Schedule

from conftest import output_tensor, strip_scales

LENGTHS = (2, 5, 8, 25)
BASE_SCALES = (0.0, 3.0, 7.5)
PCS_KAPPAS = (0.5, 1.0, 2.0, 3.0)


# ---------------------------------------------------------------------------------------------------- the spec


def g_shape(name: str, p: float, kappa: float = 2.0) -> float:
    """The un-normalised shapes g(p) of the spec's table (docs/CONVENTIONS.md §2, §3)."""
    if name == "constant":
        return 1.0
    if name == "linear":
        return 2.0 * p
    if name == "inverse_linear":
        return 2.0 * (1.0 - p)
    if name == "cosine":
        return 1.0 - math.cos(math.pi * p)
    if name == "sine":
        return 1.0 + math.cos(math.pi * p)
    if name == "v_shape":
        return 2.0 * abs(1.0 - 2.0 * p)
    if name == "lambda_shape":
        return 2.0 * (1.0 - abs(1.0 - 2.0 * p))
    if name == "pcs":
        return (1.0 - math.cos(math.pi * p**kappa)) / 2.0
    raise AssertionError(name)


SHAPES = ("constant", "linear", "inverse_linear", "cosine", "sine", "v_shape", "lambda_shape", "pcs")


def progress(n: int) -> list[float]:
    """docs/CONVENTIONS.md §1: p_i = i/(N − 1)."""
    return [i / (n - 1) for i in range(n)]


def shape_factors(name: str, n: int, kappa: float = 2.0) -> list[float]:
    """docs/CONVENTIONS.md §2: f_i = g(p_i)/mean_j g(p_j); all-zero g gives f = 0."""
    g = [g_shape(name, p, kappa) for p in progress(n)]
    total = sum(g)
    if total == 0:
        return [0.0] * n
    return [x * n / total for x in g]


def shape_scales(name: str, w: float, n: int, kappa: float = 2.0) -> list[float]:
    """docs/CONVENTIONS.md §2: w_i = 1 + (w − 1)·f_i."""
    return [1.0 + (w - 1.0) * f for f in shape_factors(name, n, kappa)]


def clamp_scales(name: str, w: float, n: int, c: float) -> list[float]:
    """docs/CONVENTIONS.md §3: w_i = 1 + max(c, (w − 1)·g(p_i)), g = 2p (clamp_linear) or 1 − cos πp (clamp_cosine)."""
    ramp = (lambda p: 2.0 * p) if name == "clamp_linear" else (lambda p: 1.0 - math.cos(math.pi * p))
    return [1.0 + max(c, (w - 1.0) * ramp(p)) for p in progress(n)]


def interval_scales(w: float, sigmas: list[float], lo: float, hi: float) -> list[float]:
    """docs/CONVENTIONS.md §3: w_i = w when lo < σ_i ≤ hi, else 1."""
    return [w if lo < s <= hi else 1.0 for s in sigmas]


def table(n: int, sigmas: list[float] | None = None) -> StepTable:
    """A StepTable of n steps; with a = 1 the noise-to-signal ratio s/a is exactly the given σ."""
    if sigmas is None:
        sigmas = [10.0 * (1.0 - i / n) + 0.01 for i in range(n)]
    timesteps = tuple(999.0 * (1.0 - i / n) for i in range(n))
    return StepTable(timesteps=timesteps, a=(1.0,) * n, s=tuple(sigmas), num_train_timesteps=1000,
                     prediction_type="epsilon")


def schedule(spec) -> Schedule:
    """A schedule built through the public spec loader."""
    return guidance.load({"schedule": spec}).schedule


def approx(values: list[float]):
    return pytest.approx(values, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------------------------------------------- StepTable


@pytest.mark.parametrize("n", LENGTHS)
def test_step_table_progress_and_sigma(n):
    sigmas = [float(i + 1) for i in range(n)][::-1]
    t = StepTable(timesteps=tuple(range(n)), a=(0.5,) * n, s=tuple(0.5 * x for x in sigmas), num_train_timesteps=1000,
                  prediction_type="epsilon")
    assert len(t) == n
    assert t.progress == approx([i / (n - 1) for i in range(n)])
    assert t.progress[0] == 0.0 and t.progress[-1] == 1.0
    assert t.sigma == approx(sigmas)


# ---------------------------------------------------------------------------------------------------- shape schedules


SHAPE_CASES = [(name, {}) for name in SHAPES if name != "pcs"] + [("pcs", {"kappa": k}) for k in PCS_KAPPAS]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("w", BASE_SCALES)
@pytest.mark.parametrize(("name", "params"), SHAPE_CASES, ids=lambda v: str(v))
def test_shape_schedule_matches_formula(name, params, w, n):
    sched = schedule({"name": name, **params})
    expected = shape_scales(name, w, n, params.get("kappa", 2.0))
    assert sched.scales(w, table(n)) == approx(expected)
    assert sched.factors(table(n)) == approx(shape_factors(name, n, params.get("kappa", 2.0)))


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize(("name", "params"), SHAPE_CASES, ids=lambda v: str(v))
def test_shape_schedules_have_mean_one(name, params, n):
    """Every shape schedule has mean f = 1 over the run, i.e. mean(w_i) = w (unless g is all zero: w_i = 1)."""
    w = 5.0
    scales = schedule({"name": name, **params}).scales(w, table(n))
    g = [g_shape(name, p, params.get("kappa", 2.0)) for p in progress(n)]
    if all(x == 0 for x in g):
        assert scales == [1.0] * n
    else:
        assert sum(scales) / n == pytest.approx(w, rel=1e-12)


def test_all_zero_shape_gives_f_zero():
    """lambda_shape over 2 steps: g = 0, 0 → f = 0 → conditional only at both steps (docs/CONVENTIONS.md §2)."""
    assert schedule("lambda_shape").scales(5.0, table(2)) == [1.0, 1.0]
    assert schedule("lambda_shape").factors(table(2)) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("name", "n", "w", "expected"),
    [
        ("v_shape", 8, 5.0, [8, 6, 4, 2, 2, 4, 6, 8]),  # the spec's own example
        ("constant", 5, 7.5, [7.5] * 5),
        ("linear", 5, 3.0, [1, 2, 3, 4, 5]),  # f = 2p = 0, .5, 1, 1.5, 2
        ("inverse_linear", 5, 3.0, [5, 4, 3, 2, 1]),
        ("cosine", 3, 3.0, [1, 3, 5]),
        ("sine", 3, 3.0, [5, 3, 1]),
        ("lambda_shape", 5, 5.0, [1, 6, 11, 6, 1]),  # g = 0,1,2,1,0: mean 0.8
        ("v_shape", 5, 5.0, [23 / 3, 13 / 3, 1, 13 / 3, 23 / 3]),  # g = 2,1,0,1,2: mean 1.2
        ("linear", 2, 4.0, [1, 7]),
        ("pcs", 3, 2.0, [1.0, 1 + 3 * (1 - math.sqrt(0.5)) / (3 - math.sqrt(0.5)), 1 + 6 / (3 - math.sqrt(0.5))]),
    ],
)
def test_shape_schedule_literal_values(name, n, w, expected):
    assert schedule(name).scales(w, table(n)) == pytest.approx([float(x) for x in expected], rel=1e-12)


@pytest.mark.parametrize("n", LENGTHS)
def test_pcs_kappa_one_is_cosine(n):
    assert schedule({"name": "pcs", "kappa": 1.0}).scales(6.0, table(n)) == approx(schedule("cosine").scales(6.0,
                                                                                                             table(n)))


# ---------------------------------------------------------------------------------------------------- clamps


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("w", (0.5, 3.0, 7.5))
@pytest.mark.parametrize("c", (0.0, 2.0, 3.5))
@pytest.mark.parametrize("name", ("clamp_linear", "clamp_cosine"))
def test_clamp_schedule_matches_formula(name, c, w, n):
    sched = schedule({"name": name, "c": c})
    assert sched.scales(w, table(n)) == approx(clamp_scales(name, w, n, c))


def test_clamp_literal_values():
    # clamp_linear, c = 2, w = 5, N = 5: (w − 1)·2p = 0, 2, 4, 6, 8 → floor 2 on ω → w_i = 3, 3, 5, 7, 9
    assert schedule({"name": "clamp_linear", "c": 2}).scales(5.0, table(5)) == approx([3.0, 3.0, 5.0, 7.0, 9.0])
    # clamp_cosine, c = 1, w = 3, N = 3: (w − 1)(1 − cos πp) = 0, 2, 4 → w_i = 2, 3, 5
    assert schedule({"name": "clamp_cosine", "c": 1}).scales(3.0, table(3)) == approx([2.0, 3.0, 5.0])
    # default c is a number ≥ 0 and the clamps are not renormalised: the last step is 1 + max(c, 2(w − 1))
    for name in ("clamp_linear", "clamp_cosine"):
        sched = schedule(name)
        assert sched.scales(5.0, table(8))[-1] == pytest.approx(1.0 + max(sched.c, 8.0))


@pytest.mark.parametrize("name", ("clamp_linear", "clamp_cosine"))
def test_clamps_have_no_cfgpp_factors(name):
    with pytest.raises(guidance.GuidanceError):
        schedule(name).factors(table(5))


# ---------------------------------------------------------------------------------------------------- interval


INTERVAL_SIGMAS = [math.inf, 10.0, 5.42, 5.0, 3.0, 1.0, 0.5, 0.28, 0.1, 0.0]


@pytest.mark.parametrize("w", (0.0, 3.0, 7.5))
@pytest.mark.parametrize(("lo", "hi"), [(0.28, 5.42), (0.5, 3.0), (0.0, 100.0), (5.0, 5.42)])
def test_interval_matches_formula(lo, hi, w):
    sigmas = INTERVAL_SIGMAS
    n = len(sigmas)
    t = StepTable(timesteps=tuple(range(n, 0, -1)), a=tuple(0.0 if s == math.inf else 1.0 for s in sigmas),
                  s=tuple(1.0 if s == math.inf else s for s in sigmas), num_train_timesteps=1000,
                  prediction_type="epsilon")
    sched = schedule({"name": "interval", "sigma_lo": lo, "sigma_hi": hi})
    assert sched.scales(w, t) == interval_scales(w, sigmas, lo, hi)
    assert sched.factors(t) == [1.0 if lo < s <= hi else None for s in sigmas]


def test_interval_boundaries_and_defaults():
    """Default interval is the paper's (0.28, 5.42]: σ = 5.42 is inside, σ = 0.28 outside."""
    sched = schedule("interval")
    assert (sched.sigma_lo, sched.sigma_hi) == (0.28, 5.42)
    t = table(4, [5.42 + 1e-9, 5.42, 0.28 + 1e-9, 0.28])
    assert sched.scales(4.0, t) == [1.0, 4.0, 4.0, 1.0]


@pytest.mark.parametrize("n", LENGTHS)
def test_interval_is_not_renormalised(n):
    assert schedule({"name": "interval", "sigma_lo": 0.0, "sigma_hi": 1e9}).scales(5.0, table(n)) == [5.0] * n


# ------------------------------------------------------------------------------------------------- rules' step scales


@pytest.mark.parametrize("n", (5, 8))
@pytest.mark.parametrize("spec", ["linear", "v_shape", "lambda_shape", {"name": "clamp_linear", "c": 0.0}])
def test_cfg_step_scales_none_exactly_where_w_is_one(spec, n):
    """docs/CONVENTIONS.md §4: the rule reports a conditional-only step (None) exactly where w_i = 1."""
    g = guidance.load({"scale": 5.0, "schedule": spec})
    name = spec if isinstance(spec, str) else spec["name"]
    expected = shape_scales(name, 5.0, n) if isinstance(spec, str) else clamp_scales(name, 5.0, n, 0.0)
    scales = g.rule.step_scales(5.0, g.schedule, table(n))
    assert [s is None for s in scales] == [x == 1.0 for x in expected]
    assert [1.0 if s is None else s for s in scales] == approx(expected)


def test_cfg_scale_one_is_conditional_only_everywhere():
    g = guidance.load({"scale": 1.0, "schedule": "linear"})
    assert g.rule.step_scales(1.0, g.schedule, table(6)) == [None] * 6


@pytest.mark.parametrize("n", (5, 8))
@pytest.mark.parametrize(("name", "params"), SHAPE_CASES, ids=lambda v: str(v))
def test_cfgpp_lambda_times_shape_factor(name, params, n):
    lam = 0.6
    g = guidance.load({"rule": "cfgpp", "scale": lam, "schedule": {"name": name, **params}})
    expected = [lam * f for f in shape_factors(name, n, params.get("kappa", 2.0))]
    assert g.rule.step_scales(lam, g.schedule, table(n)) == approx(expected)


def test_cfgpp_interval_lambda_inside_none_outside():
    g = guidance.load({"rule": "cfgpp", "scale": 0.4, "schedule": {"name": "interval", "sigma_lo": 0.5,
                                                                     "sigma_hi": 3.0}})
    t = table(5, [10.0, 3.0, 1.0, 0.5, 0.1])
    assert g.rule.step_scales(0.4, g.schedule, t) == [None, 0.4, 0.4, None, None]


@pytest.mark.parametrize("name", ("clamp_linear", "clamp_cosine"))
def test_cfgpp_with_clamp_is_refused(name):
    with pytest.raises(guidance.GuidanceError) as info:
        guidance.load({"rule": "cfgpp", "schedule": {"name": name, "c": 1.0}})
    assert name in str(info.value)
    assert "shape schedule" in str(info.value) or "constant" in str(info.value)


# ---------------------------------------------------------------------------------------------------- on a pipeline


STEPS = 6
BATCH = 2


def sd_kwargs(steps: int = STEPS) -> dict:
    return strip_scales(tiny_call_kwargs("sd", batch=BATCH, seed=0, num_inference_steps=steps))


def ddim_sigmas(pipe) -> list[float]:
    """σ_i = sqrt((1 − ᾱ_t)/ᾱ_t) at the run's timesteps, from the scheduler's ᾱ table."""
    alphas = pipe.scheduler.alphas_cumprod.double()
    return [math.sqrt((1.0 - float(alphas[int(t)])) / float(alphas[int(t)])) for t in pipe.scheduler.timesteps]


def expected_scales(spec, w: float, n: int, sigmas: list[float]) -> list[float]:
    name = spec if isinstance(spec, str) else spec["name"]
    params = {} if isinstance(spec, str) else spec
    if name in SHAPES:
        return shape_scales(name, w, n, params.get("kappa", 2.0))
    if name in ("clamp_linear", "clamp_cosine"):
        return clamp_scales(name, w, n, params.get("c", schedule(name).c))
    assert name == "interval"
    return interval_scales(w, sigmas, params.get("sigma_lo", 0.28), params.get("sigma_hi", 5.42))


PIPELINE_SCHEDULES = [
    "constant", "linear", "inverse_linear", "cosine", "sine", "v_shape", "lambda_shape",
    {"name": "pcs", "kappa": 2.0},
    {"name": "clamp_linear", "c": 0.0}, {"name": "clamp_linear", "c": 2.0},
    {"name": "clamp_cosine", "c": 0.0}, {"name": "clamp_cosine", "c": 1.5},
    "interval", {"name": "interval", "sigma_lo": 0.5, "sigma_hi": 2.0},
]


def check_run(st: dict, counter, expected: list[float], batch: int) -> None:
    """Telemetry w_i, branches and rows per step, and the RowCounter's view of the same rows."""
    steps = st["steps"]
    assert [s["step"] for s in steps] == list(range(len(expected)))
    assert [s["w"] for s in steps] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    unguided = [w == 1.0 for w in expected]
    assert [s["branches"] for s in steps] == [["cond"] if u else ["cond", "reference"] for u in unguided]
    assert [s["reference_rows"] for s in steps] == [0 if u else batch for u in unguided]
    rows = [batch if u else 2 * batch for u in unguided]
    assert [s["denoiser_rows"] for s in steps] == rows
    assert counter.calls == rows
    assert st["denoiser_rows"] == counter.rows == sum(rows)


@pytest.mark.parametrize("spec", PIPELINE_SCHEDULES, ids=str)
def test_pipeline_telemetry_and_rows(spec, row_counter):
    pipe = tiny_pipeline("sd")
    counter = row_counter(pipe)
    st: dict = {}
    guidance.run(pipe, {"scale": 5, "schedule": spec}, stats=st, **sd_kwargs())
    sigmas = ddim_sigmas(pipe)
    expected = expected_scales(spec, 5.0, STEPS, sigmas)
    check_run(st, counter, expected, BATCH)
    assert [s["sigma"] for s in st["steps"]] == pytest.approx(sigmas, rel=1e-5)


def test_pipeline_interval_skips_outside_and_guides_inside(row_counter):
    """The chosen interval cuts the 6 DDIM steps (σ ≈ 5.9, 2.9, 1.6, 0.93, 0.49, 0.04) on both sides."""
    pipe = tiny_pipeline("sd")
    counter = row_counter(pipe)
    st: dict = {}
    spec = {"name": "interval", "sigma_lo": 0.7, "sigma_hi": 2.0}
    guidance.run(pipe, {"scale": 4, "schedule": spec}, stats=st, **sd_kwargs())
    sigmas = ddim_sigmas(pipe)
    inside = [0.7 < s <= 2.0 for s in sigmas]
    assert any(inside) and not all(inside) and not inside[0] and not inside[-1]
    check_run(st, counter, [4.0 if x else 1.0 for x in inside], BATCH)


@pytest.mark.parametrize("family", ("sd_euler", "sd3"))
def test_pipeline_interval_sigma_euler_and_flow(family, row_counter):
    """σ_i is the scheduler's σ for Euler and σ/(1 − σ) for flow matching (docs/CONVENTIONS.md §3)."""
    pipe = set_scheduler(tiny_pipeline("sd"), "euler") if family == "sd_euler" else tiny_pipeline("sd3")
    kwargs = sd_kwargs() if family == "sd_euler" else strip_scales(tiny_call_kwargs("sd3", batch=BATCH,
                                                                                    num_inference_steps=STEPS))
    counter = row_counter(pipe)
    st: dict = {}
    lo, hi = 0.5, 3.0
    guidance.run(pipe, {"scale": 3, "schedule": {"name": "interval", "sigma_lo": lo, "sigma_hi": hi}}, stats=st,
                 **kwargs)
    raw = [float(x) for x in pipe.scheduler.sigmas[:STEPS].double()]
    if family == "sd3":
        sigmas = [math.inf if x >= 1.0 else x / (1.0 - x) for x in raw]
    else:
        sigmas = raw
    expected = interval_scales(3.0, sigmas, lo, hi)
    assert 1.0 in expected and 3.0 in expected
    check_run(st, counter, expected, BATCH)


@pytest.mark.parametrize("spec", ["constant", "linear"])
def test_pipeline_scale_one_is_conditional_only(spec, row_counter):
    pipe = tiny_pipeline("sd")
    counter = row_counter(pipe)
    st: dict = {}
    guidance.run(pipe, {"scale": 1, "schedule": spec}, stats=st, **sd_kwargs())
    check_run(st, counter, [1.0] * STEPS, BATCH)


@pytest.mark.parametrize("spec", ["linear", "v_shape", {"name": "pcs", "kappa": 3.0},
                                  {"name": "interval", "sigma_lo": 0.5, "sigma_hi": 2.0}], ids=str)
def test_pipeline_cfgpp_lambda_per_step(spec, row_counter):
    """CFG++ with a shape schedule uses λ_i = λ·f_i; with interval λ inside, conditional only outside."""
    lam = 0.6
    pipe = tiny_pipeline("sd")
    counter = row_counter(pipe)
    st: dict = {}
    guidance.run(pipe, {"rule": "cfgpp", "scale": lam, "schedule": spec}, stats=st, **sd_kwargs())
    name = spec if isinstance(spec, str) else spec["name"]
    if name == "interval":
        guided = [0.5 < s <= 2.0 for s in ddim_sigmas(pipe)]
        assert [s["w"] for s in st["steps"] if s["branches"] == ["cond", "reference"]] == pytest.approx(
            [lam] * sum(guided))
    else:
        lambdas = [lam * f for f in shape_factors(name, STEPS, spec.get("kappa", 2.0) if isinstance(spec, dict)
                                                  else 2.0)]
        assert [s["w"] for s in st["steps"]] == pytest.approx(lambdas, rel=1e-9, abs=1e-12)
        guided = [True] * STEPS  # λ_i = 0 still needs ε_u (x̂0_λ = x̂0_u, renoised with ε_u)
    assert [s["branches"] == ["cond", "reference"] for s in st["steps"]] == guided
    assert counter.calls == [2 * BATCH if x else BATCH for x in guided]


@pytest.mark.parametrize("name", ("clamp_linear", "clamp_cosine"))
def test_pipeline_cfgpp_with_clamp_refused(name):
    pipe = tiny_pipeline("sd")
    with pytest.raises(guidance.GuidanceError, match=name):
        guidance.run(pipe, {"rule": "cfgpp", "scale": 0.6, "schedule": name}, **sd_kwargs())
    assert "forward" not in pipe.unet.__dict__


# ---------------------------------------------------------------------------------------------------- latents


def manual_ddim(pipe, kwargs: dict, scales: list[float | None], cfgpp: bool) -> torch.Tensor:
    """DDIM (η = 0) written out by hand: CFG ε = u + w(c − u), or CFG++ x' = a'·x̂0_λ + s'·ε_u; None: ε_c only."""
    cond = pipe.encode_prompt(kwargs["prompt"], "cpu", 1, False)[0]
    uncond = pipe.encode_prompt(kwargs["negative_prompt"], "cpu", 1, False)[0]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((BATCH, 4, 8, 8), generator=generator)
    alphas = pipe.scheduler.alphas_cumprod.double()
    n = len(scales)
    ratio = 1000 // n
    timesteps = [ratio * (n - 1 - i) + 1 for i in range(n)]  # "leading" spacing, steps_offset 1
    assert [int(t) for t in pipe.scheduler.timesteps] == timesteps
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            bar, prev = float(alphas[t]), (float(alphas[t - ratio]) if t - ratio >= 0 else float(alphas[0]))
            a, s, a_prev, s_prev = math.sqrt(bar), math.sqrt(1 - bar), math.sqrt(prev), math.sqrt(1 - prev)
            c = pipe.unet(x, t, encoder_hidden_states=cond).sample.double()
            xd = x.double()
            if scales[i] is None:
                eps = c
                x0 = (xd - s * eps) / a
                x = (a_prev * x0 + s_prev * eps).float()
                continue
            u = pipe.unet(x, t, encoder_hidden_states=uncond).sample.double()
            if cfgpp:
                x0_c, x0_u = (xd - s * c) / a, (xd - s * u) / a
                x0 = x0_u + scales[i] * (x0_c - x0_u)
                x = (a_prev * x0 + s_prev * u).float()
            else:
                eps = u + scales[i] * (c - u)
                x0 = (xd - s * eps) / a
                x = (a_prev * x0 + s_prev * eps).float()
    return x


@pytest.mark.parametrize("spec", ["linear", "v_shape", {"name": "clamp_cosine", "c": 0.0},
                                  {"name": "interval", "sigma_lo": 0.7, "sigma_hi": 2.0}], ids=str)
def test_pipeline_latents_match_hand_written_cfg_loop(spec):
    pipe = tiny_pipeline("sd")
    kwargs = sd_kwargs()
    out = output_tensor(guidance.run(pipe, {"scale": 5, "schedule": spec}, **kwargs))
    w = expected_scales(spec, 5.0, STEPS, ddim_sigmas(pipe))
    expected = manual_ddim(pipe, kwargs, [None if x == 1.0 else x for x in w], cfgpp=False)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    constant = manual_ddim(pipe, kwargs, [5.0] * STEPS, cfgpp=False)
    assert (out - constant).abs().max() > 1e-3  # the schedule really changed the result


@pytest.mark.parametrize("spec", ["linear", {"name": "interval", "sigma_lo": 0.7, "sigma_hi": 2.0}], ids=str)
def test_pipeline_latents_match_hand_written_cfgpp_loop(spec):
    lam = 0.6
    pipe = tiny_pipeline("sd")
    kwargs = sd_kwargs()
    out = output_tensor(guidance.run(pipe, {"rule": "cfgpp", "scale": lam, "schedule": spec}, **kwargs))
    if spec == "linear":
        scales = [lam * f for f in shape_factors("linear", STEPS)]
    else:
        scales = [lam if 0.7 < s <= 2.0 else None for s in ddim_sigmas(pipe)]
    expected = manual_ddim(pipe, kwargs, scales, cfgpp=True)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_attach_two_calls_recompute_the_schedule_per_run(row_counter):
    """Progress and normalisation are per pipeline call: a 4-step then a 6-step call in one attach session."""
    pipe = tiny_pipeline("sd")
    counter = row_counter(pipe)
    with guidance.attach(pipe, {"scale": 5, "schedule": "lambda_shape"}) as session:
        for n in (4, 6):
            pipe(**sd_kwargs(n), guidance_scale=2.0, callback_on_step_end=session.callback)
        steps = session.stats["steps"]
    expected = {0: shape_scales("lambda_shape", 5.0, 4), 1: shape_scales("lambda_shape", 5.0, 6)}
    for run, scales in expected.items():
        assert [s["w"] for s in steps if s["run"] == run] == pytest.approx(scales, rel=1e-9, abs=1e-12)
    unguided = [w == 1.0 for w in expected[0] + expected[1]]
    assert counter.calls == [BATCH if u else 2 * BATCH for u in unguided]
    assert session.stats["runs"] == 2
