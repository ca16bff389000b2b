"""Guidance weight schedules (Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers",
TMLR 2024, arXiv 2404.13040): w(p) = 1 + (w̄ − 1)·f(p), f of mean 1 over the run's steps."""

from __future__ import annotations

from ..errors import GuidanceError
from ..plan import StepTable
from ..strategy import Strategy

PAPER = "Wang et al., TMLR 2024 (arXiv 2404.13040)"


class Schedule(Strategy):
    """Maps the base scale w to a scale per step."""

    def scales(self, w: float, steps: StepTable) -> list[float]:
        """w_i for every step of the run (diffusers' convention: w_i = 1 is conditional only)."""
        return [1.0 + (w - 1.0) * f for f in self.factors(steps)]

    def factors(self, steps: StepTable) -> list[float | None]:
        """Relative strength per step (None: no guidance at that step). CFG++ scales λ by these."""
        raise NotImplementedError


class ShapeSchedule(Schedule):
    """A schedule given by a shape g(p), normalised to mean 1 over the run (docs/CONVENTIONS.md §2)."""

    def shape(self, p: float) -> float:
        raise NotImplementedError

    def factors(self, steps: StepTable) -> list[float]:
        g = [self.shape(p) for p in steps.progress]
        mean = sum(g) / len(g)
        return [x / mean if mean != 0 else 0.0 for x in g]


class AbsoluteSchedule(Schedule):
    """A schedule that sets w_i directly (not renormalised)."""

    def factors(self, steps: StepTable) -> list[float | None]:
        raise GuidanceError(
            f"The schedule '{self.name}' sets the guidance weight in units of w − 1 and has no meaning for "
            "CFG++'s λ. Use a shape schedule (constant, linear, cosine, …) or interval with cfgpp."
        )


class WindowSchedule(Schedule):
    """Guides at full strength on the steps of a window and not at all outside it (w_i = 1 there)."""

    def inside(self, steps: StepTable) -> list[bool]:
        raise NotImplementedError

    def scales(self, w: float, steps: StepTable) -> list[float]:
        return [w if inside else 1.0 for inside in self.inside(steps)]

    def factors(self, steps: StepTable) -> list[float | None]:
        return [1.0 if inside else None for inside in self.inside(steps)]
