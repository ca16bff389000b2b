"""The models that ship with the library, by name: `model: {path: digits}` in a run config, `model: digits` in an
evaluation settings file, or `guidance.pipelines.bundled.load_bundled("digits")` from Python; and the classifiers
gfcg takes by name (`classifier: digits`)."""

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
}
CLASSIFIERS: dict[str, Path] = {"digits": MODELS_FOLDER / "digit-classifier"}  # the digits models' classes, 0–9


def bundled_classifier(name: str, device: torch.device | None = None) -> Any:
    """A bundled classifier by name, in eval mode on `device`: a module mapping samples to class logits."""
    if name not in CLASSIFIERS:
        raise GuidanceError(f"Unknown classifier {shorten(name)}: the bundled ones are {', '.join(CLASSIFIERS)}. From "
                            "Python, pass any callable that returns class logits (samples, classes).")
    from .digits import load_classifier

    return load_classifier(CLASSIFIERS[name]).to(device)
