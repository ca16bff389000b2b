"""Guidance rules: how the conditional prediction c and the reference prediction u are combined."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import GuidanceError
from ..plan import StepTable
from ..schedules.base import Schedule
from ..strategy import Strategy

Samples = slice | torch.Tensor  # which samples of the batch a combine call covers (for per-sample state)


@dataclass(frozen=True)
class RuleStep:
    """What a rule may need to know about the step it combines at."""

    index: int
    samples: Samples
    batch_size: int
    scale: float | None = None  # the unscheduled w of the term (the spec's scale, 1 + s for an extra term)


class Rule(Strategy):
    """Combines c and u at guidance scale w.

    `space` is where `combine` operates: "output" (the denoiser's raw prediction; linear rules give the
    same result in every space) or "x0" (the denoised estimate, for non-linear rules whose paper says so).
    """

    space: ClassVar[str] = "output"
    default_scale: ClassVar[float] = 7.5
    corrects_sampler: ClassVar[bool] = False  # CFG++: the scheduler's step is corrected (guidance/samplers)
    predictor_corrector: ClassVar[bool] = False  # PCG: pipeline steps predict on c, a corrector follows each

    def check_scale(self, scale: float) -> None:
        if not math.isfinite(scale) or scale < 0:
            raise GuidanceError(
                f"Guidance scale {scale!r} is out of range for rule '{self.name}': use a finite w ≥ 0 "
                "(diffusers' convention: 1 is conditional only, 7.5 is a common default)."
            )

    def step_scales(self, scale: float, schedule: Schedule, steps: StepTable) -> list[float | None]:
        """The scale of every step; None where the step is conditional only (w = 1, docs/CONVENTIONS.md §4)."""
        return [None if w == 1.0 else w for w in schedule.scales(scale, steps)]

    def reset(self) -> None:
        """Forget per-run state (called at the start of every pipeline call)."""

    def outputs_zero(self, index: int) -> bool:
        """Whether step `index` outputs 0 without evaluating the denoiser (CFG-Zero*'s zero-init)."""
        return False

    def combine(self, c: torch.Tensor, u: torch.Tensor, w: float, step: RuleStep) -> torch.Tensor:
        raise NotImplementedError
