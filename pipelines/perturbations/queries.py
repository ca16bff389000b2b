"""SEG's perturbation (Hong, "Smoothed Energy Guidance", NeurIPS 2024, arXiv 2408.00760): the self-attention queries
of the perturbed rows, blurred by a Gaussian of σ over the 2-D token grid (docs/CONVENTIONS.md §23).

As the official code (SusungHong/SEG-SDXL, SEGCFGSelfAttnProcessor) computes it: the output of `to_q` (all heads:
channel head·d + i, as the code's per-head view lays them out) seen as a (C, H, W) image; kernel size
⌈6σ⌉ + 1 made odd, capped at the grid's size; a normalised separable Gaussian; reflect padding; a depthwise
convolution. σ ≥ 9999 replaces every query by the mean query over the tokens (uniform attention). Keys and values are
unchanged. Where the official code assumes a square grid (H = W = √N), the grid here follows the latents' aspect
ratio, and the kernel cap uses the smaller side; on square grids the two agree.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Perturbation, RowDispatch

INFINITE_BLUR = 9999.0


def gaussian_blur_2d(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """A depthwise Gaussian blur of (B, C, H, W) with the official code's kernel size, normalisation and padding."""
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    side = min(image.shape[-2:])
    size = min(size, side - (side % 2 - 1))
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = (pdf / pdf.sum()).to(image.device, image.dtype)
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :]).expand(image.shape[-3], 1, size, size)
    image = F.pad(image, [size // 2] * 4, mode="reflect")
    return F.conv2d(image, kernel, groups=image.shape[-3])


def blur_queries(query: torch.Tensor, sigma: float, grid: tuple[int, int]) -> torch.Tensor:
    """Queries (B, N, C) blurred over the token grid (h, w), h·w = N; σ ≥ 9999: the mean query."""
    if sigma >= INFINITE_BLUR:
        return query.mean(dim=1, keepdim=True).expand_as(query)
    batch, tokens, channels = query.shape
    image = query.transpose(1, 2).reshape(batch, channels, *grid)
    return gaussian_blur_2d(image, sigma).reshape(batch, channels, tokens).transpose(1, 2)


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """(h, w) with h·w = tokens and the aspect ratio of a height × width latent."""
    h = max(1, round(math.sqrt(tokens * height / width)))
    w = tokens // h
    if h * w != tokens:
        raise ValueError(f"SEG cannot lay {tokens} query tokens on a grid with the latents' aspect {height}:{width}")
    return h, w


class BlurredQueries(Perturbation):
    """SEG: blurred self-attention queries in the reference's layers."""

    def install(self, dispatches: dict[tuple[int, str], RowDispatch]) -> None:
        for module in self.adapter.attention_layers(self.reference.layers, self.reference.name):
            project = module.to_q.forward

            def blurred(hidden_states: torch.Tensor, *args: Any, _project: Any = project, **kwargs: Any) -> Any:
                query = _project(hidden_states, *args, **kwargs)
                height, width = self.latent_size
                return blur_queries(query, self.reference.blur_sigma, token_grid(query.shape[1], height, width))

            self.dispatch(dispatches, module.to_q, "forward", blurred)
