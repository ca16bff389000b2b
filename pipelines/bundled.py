"""The models that ship with the library, by name: `model: {path: digits}` in a run config, `model: digits` in an
evaluation settings file, or `guidance.pipelines.bundled.load_bundled("digits")` from Python."""

from __future__ import annotations

from pathlib import Path

MODELS_FOLDER = Path(__file__).parent / "models"
BUNDLED: dict[str, Path] = {
    "digits": MODELS_FOLDER / "digits",
    "digits-no-dropout": MODELS_FOLDER / "digits-no-dropout",
    "digits-weak": MODELS_FOLDER / "digits-weak",  # autoguidance's guiding model: width 8, 1200 steps
}
