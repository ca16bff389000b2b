"""The evaluation harness: run guidance settings on a class-conditional model and measure each paper's claim.

Per setting: class accuracy and confidence (a classifier trained separately from the model), Fréchet distance
and k-NN precision/recall in that classifier's features against held-out real digits, saturation of the raw
samples, within-class feature diversity, denoiser rows, wall time and the mean effective scale (telemetry.py). Writes
a markdown and a CSV table, image grids, plots (metric vs scale per method; per-step telemetry), and the comparison
page (index.html) with its data file (evaluation.json).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import GuidanceError
from ..pipelines.api import run
from ..pipelines.bundled import BUNDLED
from ..pipelines.class_conditional import ClassConditionalPipeline
from ..pipelines.digits import (
    NUM_CLASSES,
    DigitClassifier,
    load_classifier,
    load_digit_images,
    load_pipeline,
)
from ..spec import load
from ..telemetry import mean_effective_scale
from .config import EvaluationFile
from .metrics import class_diversity, frechet_distance, knn_precision_recall, saturation


@dataclass
class Setting:
    """One row of an evaluation: a labelled guidance spec and its sampler settings."""

    name: str
    spec: dict[str, Any]
    steps: int = 25
    eta: float = 0.0
    model: str = "digits"  # a bundled model name (see BUNDLED) or a ClassConditionalPipeline folder
    unconditional: bool = False  # sample the null class (accuracy is then undefined; diversity uses predicted classes)
    method: str = ""  # groups settings into one line of the metric-vs-scale plots (default: the rule's name)

    def __post_init__(self) -> None:
        rule = load(self.spec).rule.name  # validates the spec early
        self.method = self.method or rule


def settings_from(loaded: EvaluationFile, source: str, scales: list[float] | None = None) -> list[Setting]:
    """The settings of a validated settings file, one per scale (`scales`: for entries that list none)."""
    settings = []
    for i, entry in enumerate(loaded.settings):
        name = entry.name or (Path(source).stem if len(loaded.settings) == 1 else f"setting {i}")
        common = {"steps": entry.steps or loaded.steps, "eta": entry.eta, "model": entry.model or loaded.model,
                  "method": entry.method or name, "unconditional": entry.unconditional}
        for scale in entry.scales or scales or [None]:
            spec = entry.guidance if scale is None else {**entry.guidance, "scale": scale}
            try:
                settings.append(Setting(name if scale is None else f"{name} w={scale:g}", spec, **common))
            except GuidanceError as error:
                raise GuidanceError(f"In '{source}', settings[{i}] ({name}): {error}") from None
    return settings


@dataclass
class Reference:
    """Held-out real digits in classifier features, and the real-vs-real Fréchet floor at the same sample size."""

    features: np.ndarray
    floor: float
    floor_precision: float
    floor_recall: float


def features_of(classifier: DigitClassifier, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(features, class probabilities) of images in [−1, 1]."""
    with torch.no_grad():
        features = classifier.features(images.float())
        probabilities = torch.softmax(classifier.head(features), dim=1)
    return features.numpy().astype(np.float64), probabilities.numpy()


def real_reference(classifier: DigitClassifier, samples: int, seed: int = 0) -> Reference:
    """Held-out digits, and a train subset of `samples` digits against them (the FD and k-NN floor)."""
    held_out, _ = load_digit_images("test")
    train, _ = load_digit_images("train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:samples]
    real, _ = features_of(classifier, held_out)
    subset, _ = features_of(classifier, train[pick])
    precision, recall = knn_precision_recall(real, subset)
    return Reference(real, frechet_distance(subset, real), precision, recall)


def balanced_labels(samples: int, num_classes: int = NUM_CLASSES) -> list[int]:
    return [i % num_classes for i in range(samples)]


def generate(pipe: ClassConditionalPipeline, setting: Setting, labels: Sequence[int], seed: int, batch: int,
             progress: tqdm | None = None) -> tuple[torch.Tensor, dict[str, Any], float]:
    """Raw (unclipped) samples for `labels`, merged stats of all batches, wall time in seconds."""
    generator = torch.Generator().manual_seed(seed)
    shape = (len(labels), *pipe.sample_shape)
    noise = torch.randn(shape, generator=generator)
    outputs, rows, steps = [], 0, None
    start = time.perf_counter()
    for first in range(0, len(labels), batch):
        stats: dict[str, Any] = {}
        part = run(pipe, setting.spec, stats=stats, class_labels=list(labels[first:first + batch]),
                   latents=noise[first:first + batch], num_inference_steps=setting.steps, eta=setting.eta,
                   generator=torch.Generator().manual_seed(seed + first), output_type="latent").images
        outputs.append(part)
        rows += stats["denoiser_rows"]
        steps = steps or stats["steps"]
        if progress is not None:
            progress.update(len(part))
    return torch.cat(outputs), {"denoiser_rows": rows, "steps": steps}, time.perf_counter() - start


def measure(samples: torch.Tensor, labels: Sequence[int] | None, classifier: DigitClassifier,
            reference: Reference) -> dict[str, float]:
    """Metrics of raw samples; `labels` None for unconditional samples (confidence: of the predicted class)."""
    features, probabilities = features_of(classifier, samples.clamp(-1, 1))
    predicted = probabilities.argmax(1)
    target = predicted if labels is None else np.asarray(labels)
    precision, recall = knn_precision_recall(reference.features, features)
    return {"accuracy": float("nan") if labels is None else float((predicted == target).mean()),
            "confidence": float(probabilities[np.arange(len(target)), target].mean()),
            "fd": frechet_distance(features, reference.features), "fd_floor": reference.floor,
            "precision": precision, "recall": recall, "diversity": class_diversity(features, target),
            **saturation(samples.numpy())}


def evaluate(settings: Sequence[Setting], samples: int = 500, seed: int = 0, batch: int = 250,
             out: Path | None = None, classifier: DigitClassifier | None = None, progress: bool = True,
             pipelines: dict[str, ClassConditionalPipeline] | None = None) -> list[dict[str, Any]]:
    """Run every setting on the same labels and initial noise; return one row of metrics per setting.

    `pipelines` maps model names to loaded pipelines (others are loaded by name or path on first use).
    """
    classifier = classifier or load_classifier()
    reference = real_reference(classifier, samples, seed)
    pipelines = dict(pipelines or {})
    labels = balanced_labels(samples)
    rows, telemetry, grids, specs = [], {}, {}, {}
    bar = tqdm(total=samples * len(settings), desc="evaluate", unit="sample", disable=not progress)
    for setting in settings:
        bar.set_postfix_str(setting.name)
        if setting.model not in pipelines:
            pipelines[setting.model] = load_pipeline(BUNDLED.get(setting.model, setting.model))
        pipe = pipelines[setting.model]
        wanted = [pipe.null_class] * samples if setting.unconditional else labels
        images, stats, seconds = generate(pipe, setting, wanted, seed, batch, bar)
        spec = load(setting.spec)
        row = {"setting": setting.name, "method": setting.method, "model": setting.model,
               "scale": spec.scale, "mean_w": mean_effective_scale(stats["steps"], spec.rule.to_spec()),
               "steps": setting.steps,
               **measure(images, None if setting.unconditional else labels, classifier, reference),
               "denoiser_rows": stats["denoiser_rows"],
               "rows_per_sample": stats["denoiser_rows"] / samples, "seconds": seconds}
        rows.append(row)
        telemetry[setting.name] = stats["steps"]
        grids[setting.name] = images
        specs[setting.name] = {"guidance": spec.to_spec(), "model": setting.model, "steps": setting.steps,
                               "eta": setting.eta, "unconditional": setting.unconditional}
    bar.close()
    if out is not None:
        from .report import write_report

        write_report(Path(out), rows, telemetry, grids, labels, reference, specs, seed)
    return rows
