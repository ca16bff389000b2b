"""Per-step telemetry of a guided run: kept as tensors on the hot path, turned into numbers when read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepRecord:
    """One denoising step: t, σ (noise-to-signal), w_t, branches run and per-sample agreement of the branches.

    w: the step's scheduled scale (λ_t for cfgpp), 1.0 where the schedule makes the step conditional only;
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
    denoiser_rows: int = 0
    cosine: torch.Tensor | None = field(default=None, repr=False)
    delta_norm: torch.Tensor | None = field(default=None, repr=False)
    latent_rms: torch.Tensor | None = field(default=None, repr=False)
    sample_w: torch.Tensor | None = field(default=None, repr=False)
    terms: tuple[Any, ...] = ()  # guidance.step.TermRecord of each active term
    corrector: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("run", "step", "t", "sigma", "w", "branches",
                                               "reference_rows", "denoiser_rows", "corrector")}
        out["branches"] = list(self.branches)
        for key in ("cosine", "delta_norm", "latent_rms", "sample_w"):
            out[key] = _numbers(getattr(self, key))
        out["terms"] = [{"name": term.name, "s": _numbers(term.s) if isinstance(term.s, torch.Tensor) else term.s,
                         "cosine": _numbers(term.cosine),
                         "delta_norm": _numbers(term.delta_norm)} for term in self.terms]
        return out


def _numbers(value: torch.Tensor | None) -> list[float] | None:
    return None if value is None else value.detach().float().cpu().tolist()
