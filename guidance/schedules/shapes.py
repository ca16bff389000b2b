"""The shape schedules of Wang et al., "Analysis of Classifier-Free Guidance Weight Schedulers", TMLR 2024
(arXiv 2404.13040), §3: w_i = 1 + (w − 1)·f_i with f_i = g(p_i)/mean_j g(p_j), p_i = i/(N − 1)
(docs/CONVENTIONS.md §1, §2). One line per schedule: name, g(p), the formula as `guidance list` shows it, and what
the paper found. The parameterised shape `pcs` has its own file.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .base import PAPER, ShapeSchedule

SHAPES: dict[str, tuple[Callable[[float], float], str, str]] = {
    "constant": (lambda p: 1.0, "f(p) ∝ 1", "Constant weight (plain CFG)."),
    "linear": (lambda p: 2.0 * p, "f(p) ∝ 2p", "Increasing linear ramp; the paper's recommended default."),
    "inverse_linear": (lambda p: 2.0 * (1.0 - p), "f(p) ∝ 2(1 − p)", "Decreasing ramp (worse than constant)."),
    "cosine": (lambda p: 1.0 - math.cos(math.pi * p), "f(p) ∝ 1 − cos(πp)", "Increasing cosine ramp."),
    "sine": (lambda p: 1.0 + math.cos(math.pi * p), "f(p) ∝ 1 + cos(πp)", "Decreasing cosine ramp ('sine')."),
    "v_shape": (lambda p: 2.0 * abs(1.0 - 2.0 * p), "f(p) ∝ 2·|1 − 2p|", "High at both ends, low in the middle."),
    "lambda_shape": (lambda p: 2.0 * (1.0 - abs(1.0 - 2.0 * p)), "f(p) ∝ 2(1 − |1 − 2p|)",
                     "Low at both ends, high in the middle."),
}


def shape_schedule(name: str, g: Callable[[float], float], formula: str, description: str) -> type[ShapeSchedule]:
    """The registered schedule class of one table line."""
    class_name = "".join(part.title() for part in name.split("_"))
    return type(class_name, (ShapeSchedule,), {"__doc__": description, "__module__": __name__, "name": name,
                                               "paper": PAPER, "summary": formula, "shape": lambda self, p: g(p)})


SHAPE_SCHEDULES = [shape_schedule(name, *line) for name, line in SHAPES.items()]
