"""CFG++ sampler corrections: turn a scheduler's CFG step into the CFG++ step.

The denoiser hands the scheduler g = u + λ·(c − u) (so x̂0 = x̂0_λ); CFG++ (Chung et al., ICLR 2025,
arXiv 2406.08070) renoises with the unconditional noise estimate instead of ε_λ. For single-step samplers
the difference is exact and additive: x'_CFG++ = x'_CFG + s'·(n̂_u − n̂_λ), s' being the noise coefficient of
the scheduler's next state.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import GuidanceError
from ..plan import StepTable
from ..spaces import noise_gain


class SamplerCorrection:
    """The CFG++ step for one scheduler class (per-run state lives on the instance)."""

    scheduler_class: ClassVar[str]

    def check(self, scheduler: Any) -> None:
        """Raise GuidanceError for scheduler settings this correction does not implement."""

    def reset(self) -> None:
        """Forget per-run state."""

    def correct(self, scheduler: Any, index: int, steps: StepTable, sample: torch.Tensor,
                prev_sample: torch.Tensor, u: torch.Tensor, g: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """The CFG++ next state of the B samples, given the scheduler's CFG next state `prev_sample` computed from g
        (`sample`, `prev_sample`, the reference prediction `u` and the guided prediction `g`: B rows each)."""
        raise NotImplementedError


def refuse(scheduler: Any, setting: str, fix: str) -> GuidanceError:
    return GuidanceError(f"CFG++ on {type(scheduler).__name__} does not support {setting}. {fix}")


class SingleStepCorrection(SamplerCorrection):
    """x' += s'·k·(u − g) with s' the next state's noise coefficient and k from the prediction type."""

    def next_noise(self, scheduler: Any, index: int, steps: StepTable, kwargs: dict[str, Any]) -> float:
        raise NotImplementedError

    def next_signal(self, scheduler: Any, index: int, steps: StepTable) -> float:
        """A' of the next state x' = A'·x̂0 + S'·n̂ in the scheduler's latents (S' is `next_noise`)."""
        raise NotImplementedError

    def guided_prediction(self, scheduler: Any, index: int, steps: StepTable, u: torch.Tensor,
                          g: torch.Tensor) -> torch.Tensor:
        """The prediction p whose plain step is the CFG++ step of g, for a loop that steps its scheduler with one
        prediction (a diffusers guider's, with the step's default arguments: η = 0, s_churn = 0). The step is affine
        in p: ∂x'/∂p = k·(S' − A'·σ) (σ = s/a of the step, k the noise gain), and CFG++ adds S'·k·(u − g), so
        p = g + S'/(S' − A'·σ)·(u − g)."""
        noise = self.next_noise(scheduler, index, steps, {})
        if noise == 0.0:
            return g
        factor = noise / (noise - self.next_signal(scheduler, index, steps) * steps.sigma[index])
        wide = torch.promote_types(g.dtype, torch.float32)
        return (g.to(wide) + factor * (u.to(wide) - g.to(wide))).to(g.dtype)

    def correct(self, scheduler: Any, index: int, steps: StepTable, sample: torch.Tensor,
                prev_sample: torch.Tensor, u: torch.Tensor, g: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        gain = noise_gain(steps.a[index], steps.s[index], steps.prediction_type)
        coefficient = self.next_noise(scheduler, index, steps, kwargs) * gain
        if coefficient == 0.0:
            return prev_sample
        wide = torch.promote_types(prev_sample.dtype, torch.float32)
        return (prev_sample.to(wide) + coefficient * (u.to(wide) - g.to(wide))).to(prev_sample.dtype)
