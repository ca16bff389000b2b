"""Low precision and extreme scales: fp16 / bf16 pipelines and w = 100 stay finite for every rule, reference and
the adaptive policy; APG at w = 100 with a small norm_threshold clips the guided x̂0 delta (checked against hand
math on denoiser outputs re-evaluated outside the session).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import guidance
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales

B = 2
N = 4
W = 100.0
RULES = {
    "cfg": ({"name": "cfg"}, W),
    "apg": ({"name": "apg"}, W),
    "cfgpp": ({"name": "cfgpp"}, 1.0),  # λ ∈ [0, 1]: 1 is its strongest
    "cfg_zero_star": ({"name": "cfg_zero_star"}, W),
    "tcfg": ({"name": "tcfg"}, W),
    "fdg": ({"name": "fdg", "low_scale": 50.0, "eta": 0.0}, W),
}
VARIANTS = {
    "uncond": {"reference": "uncond"},
    "icg": {"reference": "icg"},
    "tsg": {"reference": "tsg"},
    "adaptive": {"policy": {"name": "adaptive"}},
}
LOW = [("sd", torch.float16), ("sd", torch.bfloat16), ("sd3", torch.float16), ("sd3", torch.bfloat16),
       ("dit", torch.bfloat16)]


def to_dtype(kwargs: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in kwargs.items()}


def low_precision_pipe(family: str, dtype: torch.dtype):
    """The tiny pipeline converted to `dtype`, or a skip when the CPU lacks an op in that dtype."""
    pipe = tiny_pipeline(family).to(dtype)
    try:
        with torch.no_grad():
            pipe(**to_dtype(tiny_call_kwargs(family, batch=1, num_inference_steps=1), dtype))
    except (RuntimeError, NotImplementedError) as error:
        pytest.skip(f"{family} in {dtype} is not supported on this CPU: {error}")
    return pipe


class StepRecorder:
    """A wrapper put on scheduler.step that keeps every step's model_output, sample and result."""

    def __init__(self, scheduler) -> None:
        self.scheduler, self.records = scheduler, []
        original = scheduler.step

        @functools.wraps(original)
        def step(model_output, timestep, sample, *args, **kwargs):
            out = original(model_output, timestep, sample, *args, **kwargs)
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            self.records.append((model_output.detach().clone(), timestep, sample.detach().clone(),
                                 prev.detach().clone()))
            return out

        scheduler.step = step

    def close(self) -> None:
        del self.scheduler.step


def run_recorded(pipe, family: str, spec: dict, dtype: torch.dtype):
    recorder = StepRecorder(pipe.scheduler)
    stats: dict = {}
    kwargs = to_dtype(strip_scales(tiny_call_kwargs(family, batch=B, num_inference_steps=N)), dtype)
    out = output_tensor(guidance.run(pipe, spec, stats=stats, **kwargs))
    recorder.close()
    return out, stats, recorder.records


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("family", "dtype"), LOW, ids=[f"{f}-{str(d)[6:]}" for f, d in LOW])
def test_low_precision_extreme_scale_stays_finite(family, dtype, rule, variant):
    pipe = low_precision_pipe(family, dtype)
    rule_spec, scale = RULES[rule]
    spec = {"scale": scale, "rule": rule_spec, **VARIANTS[variant]}
    out, stats, records = run_recorded(pipe, family, spec, dtype)
    assert out.dtype == dtype
    assert torch.isfinite(out).all(), "the pipeline output is not finite"
    assert len(records) == N
    for k, (model_output, _, _, prev) in enumerate(records):
        assert model_output.dtype == dtype, f"step {k}: guided prediction is {model_output.dtype}"
        assert torch.isfinite(model_output).all(), f"step {k}: guided prediction not finite"
        assert torch.isfinite(prev).all(), f"step {k}: next latents not finite"
    guided = [r for r in stats["steps"] if r["reference_rows"] > 0]
    assert guided, "no step was guided"
    assert all(r["w"] == scale for r in guided)
    for record in guided:
        assert all(math.isfinite(c) for c in record["cosine"]), f"cosine {record['cosine']}"
        assert all(math.isfinite(d) for d in record["delta_norm"]), f"delta_norm {record['delta_norm']}"


@pytest.mark.parametrize("rule", ["cfg", "apg", "cfg_zero_star", "tcfg", "fdg"])
@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_extreme_scale_fp32_stays_finite(family, rule):
    pipe = tiny_pipeline(family)
    out, stats, records = run_recorded(pipe, family, {"scale": W, "rule": RULES[rule][0]}, torch.float32)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(r[0]).all() for r in records)


# ---------------------------------------------------------------- APG clipping at w = 100


def x0_of(pipe, k: int, timestep, x: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """x̂0 by hand (float64): DDIM ε-prediction or flow velocity, from the scheduler's own values."""
    x, prediction = x.double(), prediction.double()
    scheduler = pipe.scheduler
    if type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
        sigma = float(scheduler.sigmas[k])
        return x - sigma * prediction
    alpha = float(scheduler.alphas_cumprod[int(timestep)])
    return (x - math.sqrt(1 - alpha) * prediction) / math.sqrt(alpha)


def flat_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


def flat_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.flatten(1) * y.flatten(1)).sum(dim=1)


def shaped(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


@pytest.mark.parametrize(
    ("family", "dtype", "tolerance"),
    [("sd", torch.float32, 1e-4), ("sd3", torch.float32, 1e-4), ("sd", torch.float16, 2e-2),
     ("sd", torch.bfloat16, 5e-2), ("sd3", torch.bfloat16, 5e-2)],
    ids=["sd-fp32", "sd3-fp32", "sd-fp16", "sd-bf16", "sd3-bf16"],
)
def test_apg_clips_guided_x0_delta_at_w100(family, dtype, tolerance):
    r, beta = 0.1, -0.5
    pipe = low_precision_pipe(family, dtype) if dtype != torch.float32 else tiny_pipeline(family)
    denoiser = pipe.unet if family == "sd" else pipe.transformer
    inputs = []
    handle = denoiser.register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append((args, dict(kwargs))), with_kwargs=True)
    spec = {"scale": W, "rule": {"name": "apg", "eta": 0.0, "norm_threshold": r, "momentum": beta}}
    out, stats, records = run_recorded(pipe, family, spec, dtype)
    handle.remove()
    assert torch.isfinite(out).all()
    assert len(inputs) == len(records) == N
    momentum = None
    for k, ((args, kwargs), (g, timestep, x, _)) in enumerate(zip(inputs, records, strict=True)):
        with torch.no_grad():  # the pipeline's own doubled call, evaluated natively outside the session
            raw = denoiser(*args, **{**kwargs, "return_dict": False})[0]
        u, c = raw.chunk(2)  # SD and SD3 batch [uncond; cond]
        x0_c, x0_u = x0_of(pipe, k, timestep, x, c), x0_of(pipe, k, timestep, x, u)
        delta = x0_c - x0_u
        assert stats["steps"][k]["delta_norm"] == pytest.approx(flat_norm(delta).tolist(), rel=max(tolerance, 1e-5))
        momentum = delta if momentum is None else delta + beta * momentum
        norm = flat_norm(momentum)
        if k == 0:
            assert bool((norm > 4 * r).all()), f"the test needs the clip active at step 0 (‖Δ‖ = {norm})"
        clipped = momentum * shaped(torch.clamp(r / norm, max=1.0), momentum)
        parallel = shaped(flat_dot(clipped, x0_c) / (flat_dot(x0_c, x0_c) + 1e-8), x0_c) * x0_c
        expected = x0_c + (W - 1) * (clipped - parallel)
        guided = x0_of(pipe, k, timestep, x, g)
        moved = flat_norm(guided - x0_c)
        bound = (W - 1) * r
        assert bool((moved <= bound * (1 + tolerance)).all()), f"step {k}: ‖x̂0_g − x̂0_c‖ = {moved} > (w−1)·r"
        assert float(flat_norm(guided - expected).max()) <= tolerance * bound, (
            f"step {k}: guided x̂0 is {float(flat_norm(guided - expected).max())} from the hand-computed APG")
