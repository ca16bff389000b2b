"""Every preset in configs/ validates; presets of bundled models (digits, shapes) run offline; the others' guidance
runs on a tiny pipeline of their family (with their scheduler)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import guidance
from guidance.app.config import read, validate
from guidance.app.generate import generate
from guidance.pipelines.bundled import BUNDLED
from guidance.pipelines.schedulers import set_scheduler
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales

PRESETS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
FAMILIES = {"stabilityai/stable-diffusion-xl-base-1.0": "sdxl", "stabilityai/stable-diffusion-2-1": "sd",
            "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd", "facebook/DiT-XL-2-256": "dit",
            "stabilityai/stable-diffusion-3-medium-diffusers": "sd3", "stabilityai/stable-diffusion-3.5-medium": "sd35",
            "Qwen/Qwen-Image": "qwenimage", "Lightricks/LTX-Video": "ltx",
            "hunyuanvideo-community/HunyuanVideo": "hunyuanvideo",
            "black-forest-labs/FLUX.1-Kontext-dev": "flux_kontext", "Wan-AI/Wan2.2-T2V-A14B-Diffusers": "wan22",
            "black-forest-labs/FLUX.1-schnell": "flux", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "wan"}


def test_presets_cover_the_methods_and_families() -> None:
    names = {p.stem for p in PRESETS}
    assert {"sdxl-apg", "sd21-apg", "dit-apg", "sd15-cfgpp", "sdxl-ag", "sdxl-apg-linear-schedule-ag", "dit-icg-tsg",
            "digits-cfg", "sdxl-pag", "sd35-slg", "sdxl-apg-pag", "digits-autoguidance", "qwen-image", "flux-kontext",
            "ltx-video", "hunyuanvideo", "sdxl-fdg", "sd3-tcfg", "sd15-pcg", "digits-pcg", "digits-gfcg", "flux-nag",
            "wan-nag", "shapes-sd-apg", "shapes-flow-cfg-zero-star", "shapes-sd-nag"} <= names


def on_tiny_blocks(spec: guidance.Guidance, pipe) -> dict:
    """The spec with block indices beyond the tiny transformer's (SD3.5's 7–9 of 24) moved to its last block."""
    data = spec.to_spec()
    for term in data.get("terms", []):
        if term["reference"]["name"] in ("slg", "stg") and term["reference"].get("layers"):
            last = len(pipe.transformer.transformer_blocks) - 1
            term["reference"]["layers"] = [min(layer, last) for layer in term["reference"]["layers"]]
    return data


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_and_its_guidance_runs(path: Path, tmp_path: Path) -> None:
    config = validate(read(path), str(path))
    if config.model.path in BUNDLED:  # the bundled models run offline, as the preset says
        written = generate(config.model_copy(update={"sampler": config.sampler.model_copy(update={"steps": 3})}),
                           tmp_path, progress=False)
        assert len(written) == len(config.items()) * config.sampler.batch
        return
    family = FAMILIES[config.model.path]
    pipe = tiny_pipeline(family)
    if config.sampler.scheduler != "default":
        set_scheduler(pipe, config.sampler.scheduler)
    out = guidance.run(pipe, on_tiny_blocks(config.guidance, pipe),
                       **strip_scales(tiny_call_kwargs(family, batch=1, seed=0)))
    assert torch.isfinite(output_tensor(out)).all()
