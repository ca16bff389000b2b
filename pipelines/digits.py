"""The bundled digits models: scikit-learn's 8×8 digits upsampled to 16×16, a small class-conditional UNet trained
with label dropout (`digits`) and its twin trained without (`digits-no-dropout`, ICG's target case), and a separately
trained digit classifier whose features the evaluation uses. Everything here runs offline on a CPU; the training
script is `python -m guidance.app.train_digits` (its command and settings are in each model's training.json).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file
from torch import nn

from .bundled import BUNDLED, MODELS_FOLDER
from .class_conditional import ClassConditionalPipeline

NUM_CLASSES = 10
SIZE = 16
DEFAULT_MODEL = BUNDLED["digits"]
CLASSIFIER = MODELS_FOLDER / "digit-classifier"


def load_digit_images(split: str = "train", size: int = SIZE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits in [−1, 1], shape (N, 1, size, size), and labels; a stratified 80/20 split ("train", "test", "all")."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1) * 2 - 1
    labels = torch.tensor(data.target, dtype=torch.long)
    if split == "all":
        return images, labels
    train, test = train_test_split(torch.arange(len(labels)).numpy(), test_size=0.2, random_state=seed,
                                   stratify=labels.numpy())
    index = torch.tensor(train if split == "train" else test)
    return images[index], labels[index]


class DigitClassifier(nn.Module):
    """A small CNN on 16×16 digits; `features` (64-d, before the last layer) feed Fréchet distance and k-NN metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16, 64),
            nn.SiLU())
        self.head = nn.Linear(64, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [−1, 1] (values beyond are clipped, as a viewer would see them)."""
        return self.body(images.clamp(-1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def load_classifier(path: Path = CLASSIFIER) -> DigitClassifier:
    model = DigitClassifier()
    model.load_state_dict(load_file(Path(path) / "model.safetensors"))
    return model.eval()


def load_pipeline(path: Path | str = DEFAULT_MODEL, allow_pickle: bool = False) -> ClassConditionalPipeline:
    """A ClassConditionalPipeline from a folder or hub id, quietly (no loading or sampling progress bars); weights
    from safetensors only unless `allow_pickle`."""
    enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        pipe = ClassConditionalPipeline.from_pretrained(path, use_safetensors=None if allow_pickle else True)
    finally:
        if enabled:
            diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe
