"""Policies: at each step, for which samples is the reference branch evaluated at all?"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import PrivateAttr

from ..plan import StepTable
from ..strategy import Strategy


class Policy(Strategy):
    """Chooses the samples whose reference rows run; may estimate the reference for the others."""

    uses_cosine: ClassVar[bool] = False  # observe() needs cos(x̂0_c, x̂0_u) even without telemetry
    estimates: ClassVar[bool] = False  # estimate() stands in for reference rows it skipped (LinearAG)

    _batch_size: int = PrivateAttr(0)

    def reset(self, batch_size: int, steps: StepTable) -> None:
        """Start a pipeline call of `batch_size` samples over `steps`."""
        self._batch_size = batch_size

    def reference_samples(self, index: int) -> list[int]:
        """Samples (indices into the batch) whose reference rows are evaluated at step `index`."""
        return list(range(self._batch_size))

    def estimate(self, index: int, c: torch.Tensor) -> torch.Tensor | None:
        """An estimate of the reference prediction for all samples when none was evaluated, else None."""
        return None

    def observe(self, index: int, samples: list[int], c: torch.Tensor, u: torch.Tensor | None,
                cosine: torch.Tensor | None) -> None:
        """What step `index` produced: c for all samples; u and cos(x̂0_c, x̂0_u) for `samples` (or None)."""
