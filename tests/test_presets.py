"""Every preset in configs/ loads, and runs on a tiny pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import guidance
from guidance.pipelines.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales

PRESETS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_presets() -> None:
    assert len(PRESETS) >= 10


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_and_runs(path: Path) -> None:
    spec = guidance.load(path)
    family = "sd3" if spec.rule.name == "cfg_zero_star" else "sd"
    pipe = tiny_pipeline(family)
    out = guidance.run(pipe, path, **strip_scales(tiny_call_kwargs(family, batch=1, seed=0)))
    assert torch.isfinite(output_tensor(out)).all()
