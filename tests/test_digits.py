"""The bundled digits reference model: loads offline, meets the quality bar, behaves like any pipeline."""

from __future__ import annotations

import json

import pytest
import torch

import guidance
from guidance.app.evaluate import Setting, evaluate
from guidance.app.train_digits import train
from guidance.pipelines.bundled import BUNDLED
from guidance.pipelines.digits import (
    CLASSIFIER,
    DEFAULT_MODEL,
    load_classifier,
    load_digit_images,
    load_pipeline,
)

NO_DROPOUT_MODEL = BUNDLED["digits-no-dropout"]


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def test_models_are_bundled_with_their_training_records() -> None:
    for path in (DEFAULT_MODEL, NO_DROPOUT_MODEL):
        record = json.loads((path / "training.json").read_text())
        assert record["command"].startswith("python -m guidance.app.train_digits train")
        assert f"--steps {record['steps']}" in record["command"]
        assert {"seed", "wall_time_s", "steps", "label_dropout"} <= set(record)
        assert (path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < 8_000_000
    assert json.loads((DEFAULT_MODEL / "training.json").read_text())["label_dropout"] > 0
    assert json.loads((NO_DROPOUT_MODEL / "training.json").read_text())["label_dropout"] == 0


def test_classifier_is_accurate_on_held_out_digits() -> None:
    images, labels = load_digit_images("test")
    with torch.no_grad():
        accuracy = (load_classifier(CLASSIFIER)(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.98


def test_native_cfg_equals_guidance_cfg(pipe) -> None:
    labels = [3, 1, 4, 1]
    native = pipe(labels, num_inference_steps=10, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                  output_type="latent").images
    ours = guidance.run(pipe, {"scale": 3.0}, class_labels=labels, num_inference_steps=10,
                        generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert (native - ours).abs().max() <= 1e-5


def test_save_and_load_round_trip(pipe, tmp_path) -> None:
    pipe.save_pretrained(tmp_path / "copy")
    copy = load_pipeline(tmp_path / "copy")
    kwargs = {"class_labels": [7, 2], "num_inference_steps": 5, "output_type": "latent"}
    a = pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    b = copy(**kwargs, generator=torch.Generator().manual_seed(1)).images
    assert torch.equal(a, b)


def test_quality_bar_at_w1_with_ddim(pipe) -> None:
    """≥ 500 samples, w = 1, 25 deterministic DDIM steps: accuracy ≥ 95 %, FD ≤ 2× the real-vs-real distance."""
    [row] = evaluate([Setting("w=1", {"scale": 1.0}, steps=25)], samples=500, progress=False,
                     pipelines={"digits": pipe})
    assert row["accuracy"] >= 0.95
    assert row["fd"] <= 2 * row["fd_floor"]


def test_training_script_runs_and_saves(tmp_path) -> None:
    record = train(tmp_path / "model", steps=3, label_dropout=0.15, log_every=0)
    assert record["steps"] == 3 and (tmp_path / "model" / "model_index.json").is_file()
    assert load_pipeline(tmp_path / "model")([0], num_inference_steps=2, output_type="latent").images.shape == (
        1, 1, 16, 16)
