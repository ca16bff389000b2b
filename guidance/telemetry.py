"""Per-step telemetry of a guided run: kept as tensors on the hot path, turned into numbers when read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepRecord:
    """One denoising step: t, σ (noise-to-signal), w_t, branches run and per-sample agreement of the branches.

    w: the step's scale (λ_t for cfgpp), 1.0 where the step is conditional only (branches == ["cond"]);
    branches: ("cond", "reference"), ("cond",), ("cond", "estimate") where LinearAG estimated the reference,
    () for CFG-Zero*'s zero-init steps, which evaluate nothing.

    cosine: cos(x̂0_c, x̂0_u) per guided sample; delta_norm: ‖x̂0_c − x̂0_u‖ per guided sample.
    """

    run: int
    step: int
    t: float
    sigma: float
    w: float
    branches: tuple[str, ...]
    reference_rows: int
    denoiser_rows: int = 0
    pipeline_step: int | None = None
    cosine: torch.Tensor | None = field(default=None, repr=False)
    delta_norm: torch.Tensor | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("run", "step", "pipeline_step", "t", "sigma", "w", "branches",
                                               "reference_rows", "denoiser_rows")}
        out["branches"] = list(self.branches)
        for key in ("cosine", "delta_norm"):
            value = getattr(self, key)
            out[key] = None if value is None else value.detach().float().cpu().tolist()
        return out
