"""The models that ship with the library, by name: `model: {path: digits}` in a run config, `model: digits` in an
evaluation settings file, or `guidance.pipelines.digits.load_pipeline(BUNDLED["digits"])` from Python; the classifiers
gfcg takes by name (`classifier: digits`); and the judge of the captioned scenes (`bundled_judge("shapes")`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from guidance.errors import GuidanceError, shorten

MODELS_FOLDER = Path(__file__).parent / "models"
BUNDLED: dict[str, Path] = {
    "digits": MODELS_FOLDER / "digits",
    "digits-no-dropout": MODELS_FOLDER / "digits-no-dropout",
    "digits-weak": MODELS_FOLDER / "digits-weak",  # autoguidance's guiding model: width 8, 1200 steps
    "shapes-sd": MODELS_FOLDER / "shapes-sd",  # captioned scenes (shapes.py), StableDiffusionPipeline
    "shapes-flow": MODELS_FOLDER / "shapes-flow",  # captioned scenes, StableDiffusion3Pipeline (flow matching)
}
CLASSIFIERS: dict[str, Path] = {"digits": MODELS_FOLDER / "digit-classifier"}  # the digits models' classes, 0–9
JUDGES: dict[str, Path] = {"shapes": MODELS_FOLDER / "shapes-judge"}  # a captioned scene's attributes (shapes.py)


def bundled_classifier(name: str, device: torch.device | None = None) -> Any:
    """A bundled classifier by name, in eval mode on `device`: a module mapping samples to class logits."""
    if name not in CLASSIFIERS:
        raise GuidanceError(f"Unknown classifier {shorten(name)}: the bundled ones are {', '.join(CLASSIFIERS)}. From "
                            "Python, pass any callable that returns class logits (samples, classes).")
    from .digits import load_classifier

    return load_classifier(CLASSIFIERS[name]).to(device)


def bundled_judge(name: str, device: torch.device | None = None) -> Any:
    """A bundled judge by name, in eval mode on `device`: a module mapping images to logits per attribute."""
    if name not in JUDGES:
        raise GuidanceError(f"Unknown judge {shorten(name)}: the bundled ones are {', '.join(JUDGES)}. Train one with "
                            "`python -m guidance.app.train_shapes judge --out FOLDER` and load it with "
                            "guidance.pipelines.shape_judge.load_judge(FOLDER).")
    from .shape_judge import load_judge

    return load_judge(JUDGES[name]).to(device)
