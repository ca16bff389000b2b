"""`gfcg`: gradient-free classifier guidance — contrast with the conditional prediction of the class a classifier
finds most likely besides the target, at a per-sample scale set by how unsure the classifier is of the target.

Shenoy, Pan, Balakrishnan, Cheng, Jeon, Yang, Kim, "Gradient-Free Classifier Guidance for Diffusion Model Sampling"
(arXiv 2411.15393), §3: a pre-trained classifier, run in inference mode (no gradients) on the current conditional
estimate x̂0_c = x̂0(D(x_t, t, y)), chooses at every step and for every sample a reference class and a guidance scale;
the reference prediction is the same model's conditional prediction for that class:
  p = softmax(C(x̂0_c));  ŷ = argmax_{k ≠ y} p_k;  D̂ = D(x_t, t, ŷ) + w_b·(D(x_t, t, y) − D(x_t, t, ŷ)).
The scale of sample b is w_b = 1 + (w_i − 1)·(1 − p_y): the spec's (scheduled) w is the strength when the classifier
sees nothing of the target, and guidance fades as it becomes sure of it (a term's s likewise: s_b = s_i·(1 − p_y)).
The paper reports the method complementary to CFG and to autoguidance; here both combine as the paper's guidance
terms add: `{reference: uncond, terms: [{reference: gfcg, scale: s}]}` is u + w(c − u) + s_b(c − ĉ), and with
autoguidance as the main reference D_weak + w(c − D_weak) + s_b(c − ĉ) (one more network evaluation per step than
autoguidance alone).
Departures and choices (docs/CONVENTIONS.md §31): only the abstract and the method description of the paper were
available when this was written; the confusion measure 1 − p_y that scales w is the project's reading of "a
guidance scale computed on the fly from how confused the model is", to be checked against the paper's equation.
The conditional rows are evaluated in a denoiser call before the reference rows (the reference depends on them), so a
step takes two calls instead of one.
`classifier`: a bundled classifier's name (`digits`) in YAML, or from Python any callable mapping x̂0 (the model's
sample space: latents for a latent model) to class logits (B, K) over the model's K classes. Class-conditional
pipelines only (the digits pipeline, DiT).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import PrivateAttr, field_validator

from ..errors import GuidanceError
from .base import Reference, ReferenceRows

_FITTING = "give a classifier whose logits are the model's classes, in its order."


class GFCG(Reference):
    """The classifier's most likely other class, per sample and step."""

    name = "gfcg"
    from_condition = True
    reads_estimate = True
    guider_refusal = ("it needs class labels, and diffusers ships no class-conditional modular pipeline")
    paper = "Shenoy et al., 2024 (arXiv 2411.15393)"
    summary = ("reference rows see the class a `classifier` finds most likely besides the target on x̂0_c; "
               "w − 1 scaled per sample by 1 − p(target)")

    classifier: Any

    _labels: torch.Tensor | None = PrivateAttr(None)
    _factors: torch.Tensor | None = PrivateAttr(None)
    _classes: int = PrivateAttr(0)

    @field_validator("classifier")
    @classmethod
    def _classifier(cls, value: Any) -> Any:
        if (isinstance(value, str) and value.strip()) or callable(value):
            return value
        raise ValueError("classifier is a bundled classifier's name (YAML: digits) or, from Python, a callable "
                         "returning class logits")

    def __deepcopy__(self, memo: dict[int, Any]) -> GFCG:
        """Sessions work on a deep copy of the spec; the classifier is shared, never copied."""
        return self.model_copy()

    def to_spec(self) -> dict[str, Any]:
        classifier = self.classifier if isinstance(self.classifier, str) else f"<{type(self.classifier).__name__}>"
        return {"name": self.name, "classifier": classifier}

    def reset(self) -> None:
        self._labels = self._factors = None

    def observe(self, x0: torch.Tensor, labels: torch.Tensor, classifier: Callable[[torch.Tensor], torch.Tensor]
                ) -> None:
        with torch.no_grad():
            logits = classifier(x0)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x0.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise GuidanceError(f"gfcg's classifier returned {shape} for {x0.shape[0]} samples; it must return class "
                                "logits of shape (samples, classes), one column per class of the model.")
        probabilities = logits.float().softmax(dim=1)
        target = labels.to(probabilities.device).long().unsqueeze(1)
        self._classes = probabilities.shape[1]
        if int(target.max()) >= self._classes:
            raise GuidanceError(f"gfcg's classifier scores {self._classes} classes but the samples' labels go up to "
                                f"{int(target.max())}; {_FITTING}")
        self._labels = probabilities.scatter(1, target, -1.0).argmax(dim=1)
        self._factors = 1.0 - probabilities.gather(1, target).squeeze(1)

    def scale_factors(self) -> torch.Tensor | None:
        return self._factors

    def prepare(self, rows: ReferenceRows) -> None:
        if rows.kind != "class":
            raise GuidanceError("gfcg contrasts classes, but this model's condition is not a class label. Use it on "
                                "a class-conditional pipeline (digits, DiT), or icg/uncond here.")
        if self._classes != rows.num_classes:
            raise GuidanceError(f"gfcg's classifier scores {self._classes} classes but the model has "
                                f"{rows.num_classes}; {_FITTING}")
        if self._labels is None or len(rows) != len(self._labels):
            raise GuidanceError("gfcg needs every sample's conditional estimate before its reference rows; it works "
                                "with policy: always.")
        rows.set_class_labels(self._labels)
