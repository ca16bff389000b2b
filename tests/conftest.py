"""Shared test setup: offline, one CPU thread, quiet; helpers to count denoiser rows from outside."""

from __future__ import annotations

import os
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


def first_layer(pipe) -> torch.nn.Module:
    """The denoiser's first layer: every evaluated row passes it exactly once."""
    if getattr(pipe, "unet", None) is not None:
        # AnimateDiff's motion UNet folds the frames into the batch after its time embedding
        return pipe.unet.time_embedding if type(pipe.unet).__name__ == "UNetMotionModel" else pipe.unet.conv_in
    transformer = pipe.transformer
    for name in ("x_embedder", "patch_embedding", "img_in", "pos_embed", "patch_embed", "proj_in"):
        if hasattr(transformer, name):
            return getattr(transformer, name)


class RowCounter:
    """Counts the rows the denoiser really evaluates, with a forward pre-hook on its first layer."""

    def __init__(self, pipe) -> None:
        self.rows = 0
        self.calls: list[int] = []
        self._handle = first_layer(pipe).register_forward_pre_hook(self._count)

    def _count(self, module, inputs) -> None:
        self.rows += inputs[0].shape[0]
        self.calls.append(inputs[0].shape[0])

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def row_counter():
    counters: list[RowCounter] = []

    def make(pipe) -> RowCounter:
        counters.append(RowCounter(pipe))
        return counters[-1]

    yield make
    for counter in counters:
        counter.close()


def output_tensor(out) -> torch.Tensor:
    """The latents (or DiT's images, or a video pipeline's frames) of a pipeline output."""
    if isinstance(out, tuple):
        return out[0]
    tensor = out.frames if hasattr(out, "frames") else out.images
    return torch.as_tensor(tensor)  # older diffusers return DiT's "pt" images as numpy


def strip_scales(kwargs: dict) -> dict:
    """Call kwargs without the CFG strength arguments guidance.run sets itself."""
    return {k: v for k, v in kwargs.items() if k not in ("guidance_scale", "true_cfg_scale")}
