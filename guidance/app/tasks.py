"""What `guidance evaluate` asks a model for and how it reads the answers, per kind of model.

- `DigitsTask` (class-conditional models such as the bundled digits): balanced labels 0–9 (or the null class);
  accuracy and confidence by the digit classifier, FD and k-NN precision/recall in its features against held-out
  real digits, diversity within each class.
- `ScenesTask` (text-to-image models of the captioned scenes, pipelines/shapes.py, such as shapes-sd and
  shapes-flow): the captions of held-out one-object scenes as prompts (or the empty prompt); the judge's adherence
  (accuracy: every attribute read back right; confidence: the judge's probability of the prompted attributes
  together; each attribute's accuracy), FD and k-NN precision/recall in the judge's features against held-out real
  scenes, diversity within each prompted (shape, colour) pair.

Both measure the raw samples' saturation (values beyond [−1, 1] before clipping).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import GuidanceError
from ..pipelines.bundled import bundled_judge
from ..pipelines.class_conditional import ClassConditionalPipeline
from ..pipelines.digits import NUM_CLASSES, load_classifier, load_digit_images
from ..pipelines.shape_judge import ATTRIBUTES
from ..pipelines.shapes import COLOURS, HELD_OUT_SEED, SHAPES, SIZE, SIZES, generate, one_object_targets
from .metrics import class_diversity, frechet_distance, knn_precision_recall, saturation

if TYPE_CHECKING:
    from .evaluate import Setting

REAL_SCENES = 2000  # held-out real scenes the samples are compared with


@dataclass
class Reference:
    """Held-out real samples in the reader's features, and the real-vs-real Fréchet floor at the same sample size."""

    features: np.ndarray
    floor: float
    floor_precision: float
    floor_recall: float

    @classmethod
    def of(cls, real: np.ndarray, subset: np.ndarray) -> Reference:
        precision, recall = knn_precision_recall(real, subset)
        return cls(real, frechet_distance(subset, real), precision, recall)


def _common(features: np.ndarray, reference: Reference) -> dict[str, float]:
    precision, recall = knn_precision_recall(reference.features, features)
    return {"fd": frechet_distance(features, reference.features), "fd_floor": reference.floor,
            "precision": precision, "recall": recall}


class DigitsTask:
    """Class-conditional models: the samples are asked for balanced labels and read by the digit classifier."""

    floor_label = "real digits (train subset vs held-out)"

    def __init__(self, samples: int, seed: int) -> None:
        self.classifier = load_classifier()
        self.labels = [i % NUM_CLASSES for i in range(samples)]
        held_out, _ = load_digit_images("test")
        train, _ = load_digit_images("train")
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:samples]
        self.reference = Reference.of(self._read(held_out)[0], self._read(train[pick])[0])

    def _read(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(features, class probabilities) of images in [−1, 1]."""
        with torch.no_grad():
            features = self.classifier.features(images.float())
            probabilities = torch.softmax(self.classifier.head(features), dim=1)
        return features.numpy().astype(np.float64), probabilities.numpy()

    @property
    def grid_labels(self) -> list[int]:
        return self.labels

    def latent_shape(self, pipe: ClassConditionalPipeline) -> tuple[int, ...]:
        return pipe.sample_shape

    def call_arguments(self, pipe: ClassConditionalPipeline, setting: Setting, rows: slice) -> dict[str, Any]:
        labels = [pipe.null_class] * len(self.labels) if setting.unconditional else self.labels
        return {"class_labels": labels[rows], "eta": setting.eta}

    def decode(self, pipe: ClassConditionalPipeline, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def measure(self, samples: torch.Tensor, setting: Setting) -> dict[str, float]:
        """Metrics of raw samples; unconditional samples have no accuracy (confidence: of the predicted class)."""
        features, probabilities = self._read(samples.clamp(-1, 1))
        predicted = probabilities.argmax(1)
        target = predicted if setting.unconditional else np.asarray(self.labels)
        return {"accuracy": float("nan") if setting.unconditional else float((predicted == target).mean()),
                "confidence": float(probabilities[np.arange(len(target)), target].mean()),
                **_common(features, self.reference), "diversity": class_diversity(features, target),
                **saturation(samples.numpy())}


class ScenesTask:
    """Text-to-image models of the captioned scenes: prompted with held-out one-object captions, read by the judge."""

    floor_label = "real scenes (a second held-out set vs the first)"

    def __init__(self, samples: int, seed: int) -> None:
        self.judge = bundled_judge("shapes")
        scenes = generate(samples, seed=HELD_OUT_SEED + seed, kinds=("one",))
        self.prompts = scenes.captions
        self.targets = one_object_targets(scenes.scenes)
        real = generate(REAL_SCENES, seed=HELD_OUT_SEED + 10_000 + seed, kinds=("one",))
        subset = generate(samples, seed=HELD_OUT_SEED + 20_000 + seed, kinds=("one",))
        self.reference = Reference.of(*(self._features(torch.from_numpy(s.images)) for s in (real, subset)))

    def _features(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.judge.features(images.float()).numpy().astype(np.float64)

    @property
    def grid_labels(self) -> list[int]:
        """Grid rows of eight prompts each (the first 64 prompts)."""
        return [i // 8 if i < 64 else -1 for i in range(len(self.prompts))]

    def latent_shape(self, pipe: Any) -> tuple[int, ...]:
        denoiser = getattr(pipe, "unet", None) or pipe.transformer
        return (denoiser.config.in_channels, SIZE // pipe.vae_scale_factor, SIZE // pipe.vae_scale_factor)

    def call_arguments(self, pipe: Any, setting: Setting, rows: slice) -> dict[str, Any]:
        prompts = [""] * len(self.prompts) if setting.unconditional else self.prompts
        arguments: dict[str, Any] = {"prompt": prompts[rows], "height": SIZE, "width": SIZE}
        if setting.negative_prompt is not None:
            arguments["negative_prompt"] = [setting.negative_prompt] * len(arguments["prompt"])
        if "eta" in inspect.signature(pipe.__call__).parameters:
            arguments["eta"] = setting.eta
        elif setting.eta:
            raise GuidanceError(f"Setting '{setting.name}' gives eta {setting.eta:g}, but {type(pipe).__name__} has "
                                "no eta. Remove eta from that setting.")
        return arguments

    def decode(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        """The raw (unclipped) images of the pipeline's latents, as its own decoder step computes them."""
        config = pipe.vae.config
        with torch.no_grad():
            return pipe.vae.decode(latents / config.scaling_factor + (config.shift_factor or 0.0)).sample.float()

    def measure(self, samples: torch.Tensor, setting: Setting) -> dict[str, float]:
        """The judge's adherence (all attributes right), its joint probability of the prompted attributes, each
        attribute's accuracy, FD / precision / recall, diversity within prompted (shape, colour), the share showing
        what the negative prompt names, saturation."""
        images = samples.clamp(-1, 1)
        with torch.no_grad():
            features = self.judge.features(images)
            logits = {name: head(features) for name, head in self.judge.heads.items()}
        rows = np.arange(len(samples))
        right = {name: logits[name].argmax(1).numpy() == self.targets[name] for name in ATTRIBUTES}
        joint = np.prod([torch.softmax(logits[name], 1).numpy()[rows, self.targets[name]] for name in ATTRIBUTES], 0)
        features = features.numpy().astype(np.float64)
        groups = self.targets["shape"] * 100 + self.targets["colour"]
        unconditional = setting.unconditional
        read = {name: logits[name].argmax(1).numpy() for name in NEGATABLE}
        return {"accuracy": float("nan") if unconditional else float(np.all(list(right.values()), 0).mean()),
                "confidence": float("nan") if unconditional else float(joint.mean()),
                **{f"{name}_accuracy": float("nan") if unconditional else float(r.mean()) for name, r in right.items()},
                **_common(features, self.reference),
                "diversity": class_diversity(features, np.zeros(len(rows)) if unconditional else groups),
                "negative_share": negative_share(read, setting.negative_prompt), **saturation(samples.numpy())}


NEGATABLE = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}  # the object's, as the judge reads


def negative_share(read: dict[str, np.ndarray], negative_prompt: str | None) -> float:
    """The share of images whose object shows a colour, shape or size the negative prompt names (NaN without one)."""
    if negative_prompt is None:
        return float("nan")
    words = set(negative_prompt.split())
    hits = [np.isin(read[name], [i for i, value in enumerate(values) if value in words])
            for name, values in NEGATABLE.items()]
    return float(np.any(hits, 0).mean())


def task_for(pipe: Any, samples: int, seed: int, made: dict[type, DigitsTask | ScenesTask]) -> DigitsTask | ScenesTask:
    """The task that fits a pipeline (class-conditional: digits; text-to-image with a VAE: scenes), made once per
    evaluation (`made` keeps them)."""
    if isinstance(pipe, ClassConditionalPipeline):
        kind: type = DigitsTask
    elif hasattr(pipe, "tokenizer") and hasattr(pipe, "vae") and hasattr(pipe, "vae_scale_factor"):
        kind = ScenesTask
    else:
        raise GuidanceError(f"guidance evaluate cannot measure a {type(pipe).__name__}: it measures class-conditional "
                            "models (the bundled digits) and text-to-image models of the captioned scenes (the "
                            "bundled shapes-sd and shapes-flow). Evaluate one of those, or compare other pipelines "
                            "with `guidance sweep`.")
    if kind not in made:
        made[kind] = kind(samples, seed)
    return made[kind]
