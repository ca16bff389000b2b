"""The bundled judge of the captioned scenes: loads by name, is small, and reads fresh scenes as well as recorded."""

from __future__ import annotations

import json

import pytest
import torch

from guidance.app.train_shapes import HELD_OUT_SEED, judge_accuracy, one_object_scenes, train_judge
from guidance.errors import GuidanceError
from guidance.pipelines.bundled import JUDGES, bundled_judge
from guidance.pipelines.shape_judge import ATTRIBUTES, load_judge

RECORD = json.loads((JUDGES["shapes"] / "training.json").read_text())


def test_judge_is_bundled_with_its_training_record() -> None:
    assert RECORD["command"].startswith("python -m guidance.app.train_shapes judge")
    assert {"seed", "steps", "wall_time_s", "held_out_scenes", "held_out_seed"} <= set(RECORD)
    assert set(RECORD["held_out_accuracy"]) == {*ATTRIBUTES, "all"}
    assert RECORD["held_out_accuracy"]["all"] >= 0.95
    assert (JUDGES["shapes"] / "model.safetensors").stat().st_size < 1_000_000


def test_judge_reads_fresh_scenes_as_well_as_recorded() -> None:
    """300 one-object scenes from seeds neither training nor the recorded held-out set used."""
    images, targets = one_object_scenes(300, seed=HELD_OUT_SEED + 1)
    with torch.no_grad():
        accuracy = judge_accuracy(bundled_judge("shapes"), images, targets)
    for name, recorded in RECORD["held_out_accuracy"].items():
        assert accuracy[name] >= recorded - 0.03, (name, accuracy[name], recorded)


def test_judge_features_and_heads() -> None:
    judge = bundled_judge("shapes")
    images, _ = one_object_scenes(4, seed=HELD_OUT_SEED + 2)
    with torch.no_grad():
        assert judge.features(images).shape == (4, 64)
        assert judge.features(images * 3).equal(judge.features((images * 3).clamp(-1, 1)))  # clipped like a viewer
        assert {name: logits.shape[1] for name, logits in judge(images).items()} == ATTRIBUTES


def test_unknown_judge_is_refused() -> None:
    with pytest.raises(GuidanceError, match="Unknown judge 'mnist'"):
        bundled_judge("mnist")


def test_training_script_writes_a_loadable_judge_and_its_record(tmp_path) -> None:
    record = train_judge(tmp_path, steps=3, batch=8, scenes_per_round=16, held_out=20)
    assert record["steps"] == 3 and 0 <= record["held_out_accuracy"]["all"] <= 1
    assert json.loads((tmp_path / "training.json").read_text())["held_out_accuracy"] == record["held_out_accuracy"]
    assert set(load_judge(tmp_path).read(one_object_scenes(2, seed=0)[0])) == set(ATTRIBUTES)
