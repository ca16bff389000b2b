"""Which methods run on which family: every method on every tiny family, run through guidance.run, recorded as
"works" (a finite output) or as the first sentence of its refusal (a GuidanceError); pag and seg with the family's
default layers, slg and stg on block 1. Anything else is a crash, a bug
the tests report. `python -m guidance.pipelines.testing.matrix` prints the table the README shows."""

from __future__ import annotations

from typing import Any

import torch

from guidance.errors import GuidanceError

from ..api import run
from .tiny import FAMILIES, tiny_call_kwargs, tiny_pipeline

METHODS: dict[str, dict[str, Any]] = {
    "cfg": {"scale": 4.0},
    "apg": {"scale": 4.0, "rule": "apg"},
    "cfg++": {"scale": 0.6, "rule": "cfgpp"},
    "cfg-zero*": {"scale": 4.0, "rule": "cfg_zero_star"},
    "tcfg": {"scale": 4.0, "rule": "tcfg"},
    "fdg": {"scale": 4.0, "rule": {"name": "fdg", "low_scale": 2.0}},
    "pcg": {"scale": 3.0, "rule": "pcg"},
    "icg": {"scale": 4.0, "reference": "icg"},
    "tsg": {"scale": 4.0, "reference": "tsg"},
    "ag": {"scale": 4.0, "policy": "adaptive"},
    "schedule": {"scale": 4.0, "schedule": "linear"},
    "pag": {"scale": 4.0, "terms": [{"reference": "pag", "scale": 2.0}]},
    "seg": {"scale": 4.0, "terms": [{"reference": "seg", "scale": 2.0}]},
    # block 1: the real models' default blocks are beyond the tiny models' two
    "slg": {"scale": 4.0, "terms": [{"reference": {"name": "slg", "layers": [1]}, "scale": 2.0}]},
    "stg": {"scale": 4.0, "terms": [{"reference": {"name": "stg", "layers": [1]}, "scale": 2.0}]},
}
_STRENGTHS = ("guidance_scale", "true_cfg_scale")


class Crash(Exception):
    """A method failed with something other than a clear refusal."""


def first_sentence(text: str) -> str:
    head = text.split(". ")[0].rstrip(".")
    return head if len(head) <= 160 else head[:157] + "..."


def outcome(family: str, method: str) -> str:
    """'works', or 'refused: <first sentence>'; raises Crash for anything else."""
    pipe = tiny_pipeline(family)
    kwargs = {k: v for k, v in tiny_call_kwargs(family, batch=1, num_inference_steps=2).items()
              if k not in _STRENGTHS}
    try:
        result = run(pipe, METHODS[method], **kwargs)
    except GuidanceError as error:
        return f"refused: {first_sentence(str(error))}"
    except Exception as error:  # noqa: BLE001 - a crash is what this records
        raise Crash(f"{family} × {method}: {type(error).__name__}: {error}") from error
    output = result.frames if hasattr(result, "frames") else result.images
    if not bool(torch.isfinite(torch.as_tensor(output)).all()):
        raise Crash(f"{family} × {method}: the output is not finite")
    return "works"


def table(families: tuple[str, ...] = FAMILIES) -> str:
    """The markdown table: a row per family, a column per method (✓, or ✗ with its reason in a footnote)."""
    reasons: dict[str, int] = {}
    rows = []
    for family in families:
        cells = []
        for method in METHODS:
            result = outcome(family, method)
            if result == "works":
                cells.append("✓")
                continue
            number = reasons.setdefault(result.removeprefix("refused: "), len(reasons) + 1)
            cells.append(f"✗{number}")
        rows.append(f"| {family} | " + " | ".join(cells) + " |")
    head = "| family | " + " | ".join(METHODS) + " |\n|---|" + "---|" * len(METHODS) + "\n"
    notes = "\n".join(f"{n}. {reason}" for reason, n in reasons.items())
    return head + "\n".join(rows) + ("\n\n" + notes if notes else "") + "\n"


if __name__ == "__main__":
    print(table(), end="")
