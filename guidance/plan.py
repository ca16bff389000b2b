"""Per-run, host-side table of the sampler's steps: what every strategy needs to know about step i.

Built once per pipeline call from the scheduler (no device synchronisation per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class StepTable:
    """The steps of one pipeline call.

    timesteps: the scheduler's timesteps; a, s: coefficients of the model input x_t = a·x0 + s·n;
    sigma: noise-to-signal ratio s/a; progress: p_i = i/(N − 1) (0 at the noisiest step); sampler: the
    scheduler's class and the settings that shape its steps; boundary: the timestep below which a two-expert
    pipeline (Wan 2.2) runs its second denoiser, None for one denoiser.
    """

    timesteps: tuple[float, ...]
    a: tuple[float, ...]
    s: tuple[float, ...]
    num_train_timesteps: int
    prediction_type: str
    sampler: str = ""
    boundary: float | None = None

    def __len__(self) -> int:
        return len(self.timesteps)

    @cached_property
    def sigma(self) -> tuple[float, ...]:
        return tuple(s / a if a > 0 else float("inf") for a, s in zip(self.a, self.s, strict=True))

    @cached_property
    def progress(self) -> tuple[float, ...]:
        n = len(self.timesteps)
        return tuple(i / (n - 1) if n > 1 else 0.0 for i in range(n))
