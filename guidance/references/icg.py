"""`icg`: independent condition guidance — contrast against a condition ŷ independent of x_t.

Sadat, Kansy, Hilliges, Weber, "No Training, No Problem: Rethinking Classifier-Free Guidance for Diffusion
Models", ICLR 2025 (arXiv 2407.02687), §4 and Algorithm 1: D̂ = D(x_t, t, ŷ) + w·(D(x_t, t, y) − D(x_t, t, ŷ)),
ŷ drawn afresh at every step for every sample. Sources of ŷ: `class` (a random class label, never the null
class), `prompt` (the embedding of a random prompt from `prompts`, default a built-in list of generic captions,
encoded by the pipeline's own text encoder) or `gaussian` (noise with the per-sample mean and std of the real
condition embedding, over all non-batch dims). Default: `class` for class-conditional models, `gaussian` for text
models. Works on models trained without condition dropout (docs/CONVENTIONS.md §13).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..errors import GuidanceError
from .base import ReferenceRows, SeededReference


def gaussian_like(embedding: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with each sample's mean and std of `embedding` (over all non-batch dims)."""
    wide = embedding.float()
    dims = tuple(range(1, wide.ndim))
    mean = wide.mean(dim=dims, keepdim=True)
    std = wide.std(dim=dims, keepdim=True)
    noise = torch.randn(wide.shape, generator=generator).to(wide.device, non_blocking=True)
    return (mean + std * noise).to(embedding.dtype)


class ICG(SeededReference):
    """Random independent condition in the reference rows."""

    name = "icg"
    from_condition = True
    paper = "Sadat, Kansy, Hilliges & Weber, ICLR 2025 (arXiv 2407.02687)"
    summary = "reference rows see a random class, random prompt or matched Gaussian condition"

    source: Literal["class", "prompt", "gaussian"] | None = None
    prompts: list[str] | None = Field(None, min_length=1)  # the `prompt` source's list (default: RANDOM_PROMPTS)

    @model_validator(mode="after")
    def _prompts_need_prompt_source(self) -> ICG:
        if self.prompts is not None and self.source != "prompt":
            raise ValueError(f"`prompts` is the list of the `prompt` source, but source is {self.source}: set "
                             "source: prompt, or drop prompts")
        return self

    def _source(self, rows: ReferenceRows) -> str:
        source = self.source or ("class" if rows.kind == "class" else "gaussian")
        allowed = {"class": ("class",), "text": ("prompt", "gaussian")}.get(rows.kind, ())
        if source not in allowed:
            condition = {"class": "a class label", "text": "a text embedding"}.get(rows.kind, "absent")
            fix = " or ".join(allowed) if allowed else "none (use reference: tsg for unconditional models)"
            raise GuidanceError(f"ICG source '{source}' does not fit this model, whose condition is {condition}. "
                                f"Use source: {fix}.")
        return source

    def prepare(self, rows: ReferenceRows) -> None:
        source = self._source(rows)
        n = len(rows)
        if source == "class":
            labels = torch.randint(0, rows.num_classes, (n,), generator=self._generator)
            rows.set_class_labels(labels.to(rows.class_labels().device, non_blocking=True))
        elif source == "gaussian":
            rows.set_embeddings({k: gaussian_like(v, self._generator) for k, v in rows.embeddings().items()})
        else:
            bank = rows.prompt_bank(self.prompts)
            size = len(next(iter(bank.values())))
            pick = torch.randint(0, size, (n,), generator=self._generator)
            rows.set_embeddings({k: v[pick.to(v.device, non_blocking=True)] for k, v in bank.items()})
