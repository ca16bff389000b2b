"""The judge of the captioned scenes (shapes.py): a small CNN, trained separately from any generator, that reads a
one-object scene's attributes back from its pixels — one head per attribute — so that a text-to-image model's
prompt adherence can be measured (all attributes right) and its samples compared in the judge's features (Fréchet
distance). Training script: `python -m guidance.app.train_shapes judge` (its command, settings and held-out
accuracy are in the model folder's training.json).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .shapes import COLOURS, POSITIONS, SHAPES, SIZES

ATTRIBUTES: dict[str, int] = {"shape": len(SHAPES), "colour": len(COLOURS), "size": len(SIZES),
                              "position": len(POSITIONS), "background": len(COLOURS)}


class ShapeJudge(nn.Module):
    """A CNN on 32×32 RGB scenes in [−1, 1]; `features` (64-d) feed Fréchet distance, one linear head per attribute
    (ATTRIBUTES, indexed as shapes.one_object_targets) gives its logits."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * width * 16, 64), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(64, n) for name, n in ATTRIBUTES.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [−1, 1] (values beyond are clipped, as a viewer would see them)."""
        return self.body(images.clamp(-1, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The most likely value of each attribute, as indices into the grammar's tables."""
        return {name: logits.argmax(1) for name, logits in self(images).items()}


def load_judge(path: Path) -> ShapeJudge:
    model = ShapeJudge()
    model.load_state_dict(load_file(Path(path) / "model.safetensors"))
    return model.eval()
