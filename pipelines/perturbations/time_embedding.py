"""TSG's perturbation (Sadat et al., ICLR 2025, arXiv 2407.02687, §5): s·t^α·n added to the output of the
denoiser's time embedder(s) for the reference's rows, n drawn once per denoiser call (the same n for every embedder:
DiT has one per block). Class, text and pooled-text embeddings added after the embedder stay untouched
(docs/CONVENTIONS.md §14). A per-token time embedding (Wan 2.2 TI2V-5B's `expand_timesteps`: (batch, tokens, width))
gets one n per sample on every token, as a shared embedding would, the step's t included."""

from __future__ import annotations

from typing import Any

import torch

from .base import Perturbation, RowDispatch


class TimeEmbedding(Perturbation):
    """Noise on the time embedding of the reference's rows."""

    def install(self, dispatches: dict[tuple[int, str], RowDispatch]) -> None:
        for module in self.adapter.time_embedders():
            self.hook(module.register_forward_hook(self._add_noise))

    def start_call(self) -> None:
        super().start_call()
        self._noise: torch.Tensor | None = None

    def _add_noise(self, module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        rows = self.local_rows(output.shape[0])
        if rows is None:
            return None
        if self._noise is None:
            shape = output[rows].shape
            noise = self.reference.time_noise((shape[0], *[1] * (len(shape) - 2), shape[-1]), self.t)
            self._noise = noise.to(output.device, output.dtype, non_blocking=True)
        perturbed = output.clone()
        perturbed[rows] = perturbed[rows] + self._noise
        return perturbed
