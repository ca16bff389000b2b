"""The comparison page of a sweep or an evaluation: one self-contained `index.html` (inline style and script, images
by relative path, nothing fetched: it works from file://) that shows the folder's one data file (`sweep.json`,
`evaluation.json`). The page embeds that file as it is on disk and computes nothing the file does not hold, so it is
a view, rewritten from the file whenever the sweep or evaluation finishes (also a restarted one).

This module also shapes what the data file holds for the page: each cell's settings that differ from the base, and
its per-step telemetry summarised over its calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..telemetry import effective_scales
from .media import atomic_write

PAGE = "index.html"
TEMPLATE = Path(__file__).with_name("page.html")
_DATA_MARK = "/*DATA*/"
_MISSING = object()


def number(value: float | None, digits: int = 5) -> float | None:
    """`value` to `digits` significant digits (None and non-finite values: None), to keep the data file small."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(f"{value:.{digits}g}")


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flatten(value, path + ".")
        else:
            out[path] = value
    return out


def differing(configs: list[dict[str, Any]], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per config, the flattened fields whose value differs from `base` (fields `base` lacks count as differing);
    without a base, the fields whose value is not the same in every config."""
    flat = [flatten(config) for config in configs]
    if base is None:
        base = {key: value for key, value in flat[0].items() if all(f.get(key, _MISSING) == value for f in flat)}
    else:
        base = flatten(base)
    return [{key: value for key, value in f.items() if base.get(key, _MISSING) != value} for f in flat]


def mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def summary(calls: list[list[dict[str, Any]]], rule: dict[str, Any]) -> dict[str, list[float | None]]:
    """Per pipeline step, over every call (each a list of `StepRecord.as_dict`) and every guided sample: the scheduled
    w_t, the effective scale (`telemetry.effective_scales` for the spec's `rule`), mean cos(x̂0_c, x̂0_u), mean
    ‖x̂0_c − x̂0_u‖ and the mean number of branches run (PCG's corrector records count in the effective scale only)."""
    calls = [steps for steps in calls if steps]
    if not calls:
        return {}
    scales = [[w for w, step in zip(effective_scales(steps, rule), steps, strict=True) if not step.get("corrector")]
              for steps in calls]
    calls = [[step for step in steps if not step.get("corrector")] for steps in calls]
    count = min(len(steps) for steps in calls)

    def per_step(value: Any) -> list[float | None]:
        return [number(mean([v for steps in calls for v in value(steps[i])])) for i in range(count)]

    return {"w": per_step(lambda step: [step["w"]]),
            "w_effective": [number(mean([s[i] for s in scales])) for i in range(count)],
            "cosine": per_step(lambda step: step["cosine"] or []),
            "delta_norm": per_step(lambda step: step["delta_norm"] or []),
            "branches": per_step(lambda step: [len(step["branches"])])}


def write_page(folder: Path, data_name: str) -> Path:
    """Write folder/index.html showing folder/`data_name` (embedded as it is on disk); returns its path."""
    text = (folder / data_name).read_text()
    json.loads(text)  # the page shows only a complete data file
    page = TEMPLATE.read_text().replace(_DATA_MARK, text.replace("</", "<\\/"), 1)
    target = folder / PAGE
    atomic_write(target, lambda path: Path(path).write_text(page))
    return target
