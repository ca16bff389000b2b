"""Per-step telemetry of a guided run: kept as tensors on the hot path, turned into numbers when read."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepRecord:
    """One denoising step: t, σ (noise-to-signal), w_t, branches run and per-sample agreement of the branches.

    w: the step's scheduled scale (λ_t for cfgpp), 1.0 where the schedule makes the step conditional only;
    samples: B, the samples of the step's batch (reference_rows of them were guided against an evaluated reference);
    branches: ("cond", "reference"), ("cond",) (also where AG has switched every sample off), ("cond", "estimate")
    where LinearAG estimated the reference, () for CFG-Zero*'s zero-init steps, which evaluate nothing.

    cosine: cos(x̂0_c, x̂0_u) per guided sample; delta_norm: ‖x̂0_c − x̂0_u‖ per guided sample;
    latent_rms: the RMS of each sample's latents after the step (recorded by `session.callback`, so None for
    pipelines without `callback_on_step_end`: DiT, PixArt);
    sample_w: each sample's w where the main reference sets it per sample (gfcg), else None;
    terms: each active guidance term's reference name, s_i (a list where per sample) and per-sample
    cos(x̂0_c, x̂0_r), ‖x̂0_c − x̂0_r‖;
    corrector: 0 for the pipeline's own step; k for PCG's k-th corrector iteration at this step's noise level.
    """

    run: int
    step: int
    t: float
    sigma: float
    w: float
    branches: tuple[str, ...]
    reference_rows: int
    samples: int = 0
    denoiser_rows: int = 0
    cosine: torch.Tensor | None = field(default=None, repr=False)
    delta_norm: torch.Tensor | None = field(default=None, repr=False)
    latent_rms: torch.Tensor | None = field(default=None, repr=False)
    sample_w: torch.Tensor | None = field(default=None, repr=False)
    terms: tuple[Any, ...] = ()  # guidance.step.TermRecord of each active term
    corrector: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("run", "step", "t", "sigma", "w", "branches",
                                               "reference_rows", "samples", "denoiser_rows", "corrector")}
        out["branches"] = list(self.branches)
        for key in ("cosine", "delta_norm", "latent_rms", "sample_w"):
            out[key] = _numbers(getattr(self, key))
        out["terms"] = [{"name": term.name, "s": _numbers(term.s) if isinstance(term.s, torch.Tensor) else term.s,
                         "cosine": _numbers(term.cosine),
                         "delta_norm": _numbers(term.delta_norm)} for term in self.terms]
        return out


def _numbers(value: torch.Tensor | None) -> list[float] | None:
    return None if value is None else value.detach().float().cpu().tolist()


def _cfgpp_scale(strength: float, sigma: float, after: float) -> float:
    """CFG++'s λ as the scale of the CFG step it equals, λ·σ_t/(σ_t − σ_{t+1}); at pure noise (σ_t = ∞, flow
    matching's first step) its limit λ."""
    return strength if math.isinf(sigma) else strength * sigma / (sigma - after)


def effective_scales(steps: list[dict[str, Any]], rule: Mapping[str, Any] | None = None) -> list[float | None]:
    """The CFG scale each recorded step of one run (`StepRecord.as_dict`) acted with, so that methods whose `scale`
    means different things can be compared at matched strength; `rule`: the spec's rule (`Rule.to_spec()`), None: cfg.

    w_t where the reference (or LinearAG's estimate of it) entered the step, 1 where the step was conditional only,
    and their mean over the samples where AG guided only some of them: 1 + (w_t − 1)·reference_rows/samples; None for
    CFG-Zero*'s zero-init steps (no combination at all). For CFG++, λ_t becomes the scale of the CFG step it equals,
    ω_t = λ_t·σ_t/(σ_t − σ_{t+1}) with σ the noise-to-signal ratio (Chung et al., arXiv 2406.08070; ALGORITHMS.md:
    exact for deterministic single-step samplers, the single-step equivalent for DPM++ 2M and DDIM with η > 0); the
    last step, whose next state the telemetry does not hold, is None. For PCG, a pipeline step's corrector
    iterations (records with `corrector` ≥ 1, themselves None) add r·(γ_j − 1)/2 each to its scale: DDPM-CFG's w,
    to which one iteration at γ = 2w − 1 amounts in the paper's limit (docs/CONVENTIONS.md §32). Terms (PAG, SLG, …)
    add strength that is not counted here.
    """
    name = (rule or {}).get("name", "cfg")
    step_size = float((rule or {}).get("step_size", 1.0))
    scales: list[float | None] = []
    own = 0  # index in `scales` of the last pipeline step's record
    for i, step in enumerate(steps):
        share = 1.0 if "estimate" in step["branches"] or not step.get("samples") else \
            step["reference_rows"] / step["samples"]
        guided = "reference" in step["branches"] or "estimate" in step["branches"]
        if step.get("corrector"):
            scales[own] += step_size * (step["w"] - 1.0) * (share if guided else 0.0) / 2
            scales.append(None)
            continue
        own = len(scales)
        if not step["branches"]:
            scales.append(None)
        elif not guided:
            scales.append(1.0)
        elif name == "cfgpp" and i + 1 == len(steps):
            scales.append(None)
        else:
            w = _cfgpp_scale(step["w"], step["sigma"], steps[i + 1]["sigma"]) if name == "cfgpp" else step["w"]
            scales.append(1.0 + (w - 1.0) * share)
    return scales


def mean_effective_scale(steps: list[dict[str, Any]], rule: Mapping[str, Any] | None = None) -> float | None:
    """The mean of `effective_scales` over the steps that have one (None when none has)."""
    known = [w for w in effective_scales(steps, rule) if w is not None]
    return sum(known) / len(known) if known else None
