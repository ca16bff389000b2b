"""Each family's prediction type and time convention are right: APG's x̂0-space update, computed by hand from the
denoiser's native outputs and the family's facts as read from its pipeline code (docs/CONVENTIONS.md §3), equals
the prediction guidance hands the scheduler on every step of every family.

The facts below are this test's own (not the adapters'): how the pipeline batches its CFG branches, what its
denoiser predicts, how the time it passes maps to the scheduler's noise level, and what the pipeline does to the
combined prediction before its scheduler step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import guidance
from guidance.pipelines.testing.tiny import FAMILIES, tiny_call_kwargs, tiny_pipeline

from conftest import denoisers, strip_scales

B = 2
N = 4
W = 5.0


def norm_rescale(cond: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
    """Qwen-Image's and Lumina 2's rescale of the combined prediction to the conditional's norm along the last dim
    (per token for Qwen's packed latents, per latent row for Lumina's unpacked ones)."""
    return guided * (cond.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))


@dataclass(frozen=True)
class Facts:
    """protocol: "doubled" (one call on [uncond; cond], or [cond; uncond] with cond_first) or "separate" (a cond
    call, then a negative call); prediction: "epsilon", "v_prediction" or "flow" (x_t = (1 − σ)·x0 + σ·n, output
    n − x0 at the scheduler's σ); channels: output channels that are the prediction (learned variance); inputs: the
    leading input channels that are x_t (condition channels follow); negated: the pipeline negates the denoiser's
    output before combining (Lumina 2: its transformer runs time the other way and predicts x0 − n); after: the
    pipeline's own change to the combined prediction; tokens: the leading tokens of the sequence the pipeline keeps
    (Kontext: the input image's tokens follow them and are dropped); squeezed: a singleton dim of the denoiser's
    input and output the pipeline drops before its scheduler step (Z-Image: its frame dim 2). Z-Image's denoiser takes
    and returns lists of per-sample tensors; they are stacked here."""

    protocol: str
    prediction: str
    cond_first: bool = False
    channels: int | None = None
    inputs: int | None = None
    negated: bool = False
    after: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    tokens: int | None = None
    squeezed: int | None = None


FACTS = {
    "sd": Facts("doubled", "epsilon"),
    "sdxl": Facts("doubled", "epsilon"),
    "sd3": Facts("doubled", "flow"),
    "sd35": Facts("doubled", "flow"),
    "flux": Facts("separate", "flow"),
    "pixart": Facts("doubled", "epsilon", channels=4),
    "pixart_sigma": Facts("doubled", "epsilon", channels=4),
    "dit": Facts("doubled", "epsilon", cond_first=True, channels=4),
    "wan": Facts("separate", "flow"),
    "wan22": Facts("separate", "flow"),
    "wan_i2v": Facts("separate", "flow", inputs=16),  # noisy latents, then the frame mask and the encoded image
    "wan22_5b": Facts("separate", "flow"),  # one time per token
    "wan22_5b_i2v": Facts("separate", "flow"),  # x_t with the encoded first frame in place of its latents (time 0)
    "sana": Facts("doubled", "flow"),
    "kolors": Facts("doubled", "epsilon"),
    "hidream": Facts("doubled", "flow", negated=True),
    "qwenimage": Facts("separate", "flow", after=norm_rescale),
    "ltx": Facts("doubled", "flow"),
    "hunyuanvideo": Facts("separate", "flow"),
    "cogvideox": Facts("doubled", "v_prediction"),
    "animatediff": Facts("doubled", "epsilon"),
    "flux_kontext": Facts("separate", "flow", tokens=16),  # 4 x 4 packed latents, then the image's 16 tokens
    "flux2_klein": Facts("separate", "flow"),
    "chroma": Facts("separate", "flow"),
    "lumina2": Facts("separate", "flow", after=norm_rescale, negated=True),
    # [cond; uncond] (`prompt_embeds + negative_prompt_embeds`), output x0 − n negated before the step, frame dim
    # dropped (`noise_pred.squeeze(2)`); cfg_normalization is off in these calls
    "zimage": Facts("doubled", "flow", cond_first=True, negated=True, squeezed=2),
}


def test_every_family_has_facts() -> None:
    assert set(FAMILIES) <= set(FACTS)  # (an older diffusers lacks some families)


class Recorder:
    """Every denoiser call's module and inputs (a forward pre-hook on each denoiser: a second expert too) and every
    scheduler step's inputs, grouped by step."""

    def __init__(self, pipe) -> None:
        self.calls: list[tuple[torch.nn.Module, tuple, dict]] = []
        self.steps: list[tuple[torch.Tensor, int]] = []  # (model_output, calls so far)
        self.handles = [denoiser.register_forward_pre_hook(
            lambda module, args, kwargs: self.calls.append((module, args, dict(kwargs))), with_kwargs=True)
            for denoiser in denoisers(pipe)]
        self.scheduler = pipe.scheduler
        original = pipe.scheduler.step

        @functools.wraps(original)
        def step(model_output, *args, **kwargs):
            self.steps.append((model_output.detach().clone(), len(self.calls)))
            return original(model_output, *args, **kwargs)

        pipe.scheduler.step = step

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        del self.scheduler.step

    def per_step(self) -> list[list[tuple[torch.nn.Module, tuple, dict]]]:
        bounds = [0, *(n for _, n in self.steps)]
        return [self.calls[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def native(call: tuple[torch.nn.Module, tuple, dict]) -> torch.Tensor:
    denoiser, args, kwargs = call
    with torch.no_grad():
        out = denoiser(*args, **{**kwargs, "return_dict": False})[0]
    return (torch.stack(out) if isinstance(out, list) else out).double()


def input_of(call: tuple[torch.nn.Module, tuple, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, timestep) the pipeline passed to its denoiser."""
    _, args, kwargs = call
    x = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
    x = torch.stack(x) if isinstance(x, list) else x
    return x.double(), kwargs.get("timestep", args[1] if len(args) > 1 else None)


def coefficients(pipe, facts: Facts, k: int, timestep: torch.Tensor) -> tuple[float, float]:
    """(a, s) of x_t = a·x0 + s·n at step k, from the scheduler's own values."""
    scheduler = pipe.scheduler
    if facts.prediction == "flow":
        sigma = float(scheduler.sigmas[k])
        return 1.0 - sigma, sigma
    alpha = float(scheduler.alphas_cumprod[int(timestep.flatten()[0])])
    return math.sqrt(alpha), math.sqrt(1.0 - alpha)


def to_x0(facts: Facts, out: torch.Tensor, x: torch.Tensor, a: float, s: float) -> torch.Tensor:
    if facts.prediction == "epsilon":
        return (x - s * out) / a
    if facts.prediction == "v_prediction":
        return a * x - s * out
    return x - s * out


def from_x0(facts: Facts, x0: torch.Tensor, x: torch.Tensor, a: float, s: float) -> torch.Tensor:
    if facts.prediction == "epsilon":
        return (x - a * x0) / s
    if facts.prediction == "v_prediction":
        return (a * x - x0) / s
    return (x - x0) / s


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def apg_by_hand(x0_c: torch.Tensor, x0_u: torch.Tensor) -> torch.Tensor:
    """APG with η = 0, no norm threshold, no momentum (arXiv 2410.02416 eq. 4–5): x̂0_c + (w − 1)·Δ⊥."""
    delta = (x0_c - x0_u).flatten(1)
    c = x0_c.flatten(1)
    parallel = ((delta * c).sum(1, keepdim=True) / (c * c).sum(1, keepdim=True)) * c
    return x0_c + (W - 1) * (delta - parallel).view_as(x0_c)


@pytest.mark.parametrize("family", FAMILIES)
def test_apg_in_x0_space_matches_hand_formula(family: str) -> None:
    facts = FACTS[family]
    pipe = tiny_pipeline(family)
    recorder = Recorder(pipe)
    spec = {"scale": W, "rule": {"name": "apg", "eta": 0.0, "norm_threshold": None, "momentum": 0.0}}
    guidance.run(pipe, spec, **strip_scales(tiny_call_kwargs(family, batch=B, seed=3, num_inference_steps=N)))
    recorder.close()
    groups = recorder.per_step()
    assert len(groups) == N
    for k, (calls, (guided, _)) in enumerate(zip(groups, recorder.steps, strict=True)):
        if facts.protocol == "separate":
            assert len(calls) == 2, f"step {k}: {len(calls)} denoiser calls"
            cond, uncond = native(calls[0]), native(calls[1])
            x, timestep = input_of(calls[0])
        else:
            assert len(calls) == 1, f"step {k}: {len(calls)} denoiser calls"
            first, second = native(calls[0]).chunk(2)
            cond, uncond = (first, second) if facts.cond_first else (second, first)
            x, timestep = input_of(calls[0])
            x = x.chunk(2)[0 if facts.cond_first else 1]
        if facts.channels:
            cond, uncond = cond[:, :facts.channels], uncond[:, :facts.channels]
        if facts.negated:
            cond, uncond = -cond, -uncond
        if facts.inputs:
            x = x[:, :facts.inputs]
        a, s = coefficients(pipe, facts, k, timestep)
        if facts.tokens:
            assert x.shape[1] > facts.tokens, "the call holds no conditioning tokens: the check cannot see them"
            apg_everywhere = apg_by_hand(to_x0(facts, cond, x, a, s), to_x0(facts, uncond, x, a, s))
            every_token = from_x0(facts, apg_everywhere, x, a, s)
            cond, uncond, x = (v[:, :facts.tokens] for v in (cond, uncond, x))
        x0_c, x0_u = to_x0(facts, cond, x, a, s), to_x0(facts, uncond, x, a, s)
        expected = from_x0(facts, apg_by_hand(x0_c, x0_u), x, a, s)
        if facts.after is not None:
            expected = facts.after(cond, expected)
        got = guided[:B].double()
        if facts.squeezed is not None:
            got = got.unsqueeze(facts.squeezed)
        if facts.channels:
            got = got[:, :facts.channels]
        # compared as x̂0, where APG acts: the output space divides float32 rounding by s (ε at the last step)
        x0_got, x0_expected = to_x0(facts, got, x, a, s), to_x0(facts, expected, x, a, s)
        error = float((x0_got - x0_expected).abs().max())
        assert error <= 1e-4 * float(x0_expected.abs().max()) + 1e-5, f"step {k}: x̂0 is {error} from the hand APG"
        assert float((got - from_x0(facts, x0_c + (W - 1) * (x0_c - x0_u), x, a, s)).abs().max()) > 1e-3, (
            "the projection changed nothing: the check cannot tell APG from CFG here")
        if facts.tokens:
            assert float((got - every_token[:, :facts.tokens]).abs().max()) > 1e-3, (
                "APG over the image's tokens too gives the same: the check cannot tell them apart")


@pytest.mark.parametrize("family", FAMILIES)
def test_cfg_zero_star_zero_init_hands_the_scheduler_zero(family: str) -> None:
    """CFG-Zero*'s zero-init step (arXiv 2503.18886 §3.3): the prediction the pipeline steps with is exactly 0, after
    whatever the pipeline does to its combined prediction (Qwen-Image's norm rescale would make 0/0 of it)."""
    pipe = tiny_pipeline(family)
    recorder = Recorder(pipe)
    spec = {"scale": W, "rule": {"name": "cfg_zero_star", "zero_init_steps": 1}}
    guidance.run(pipe, spec, **strip_scales(tiny_call_kwargs(family, batch=B, seed=3, num_inference_steps=N)))
    recorder.close()
    (first, _), *rest = recorder.steps
    prediction = first[:B, :FACTS[family].channels] if FACTS[family].channels else first[:B]
    assert bool((prediction == 0).all()), f"step 0 steps with max |v| = {float(prediction.abs().max())}"
    assert all(bool(torch.isfinite(out).all()) and bool(out.abs().max() > 0) for out, _ in rest)
