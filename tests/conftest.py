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


def denoisers(pipe) -> list[torch.nn.Module]:
    """The pipeline's denoisers: its UNet, or its transformer and a second expert if it has one (Wan 2.2)."""
    if getattr(pipe, "unet", None) is not None:
        return [pipe.unet]
    return [d for d in (pipe.transformer, getattr(pipe, "transformer_2", None)) if d is not None]


def first_layer(pipe, denoiser: torch.nn.Module | None = None) -> torch.nn.Module:
    """The first layer of the pipeline's (first) denoiser: every evaluated row passes it exactly once (AnimateDiff's
    motion UNet folds the frames into the batch after its time embedding, so its rows are counted there; Z-Image's
    patch embedder sees the samples' tokens concatenated, so its rows are counted at its time embedder)."""
    denoiser = denoisers(pipe)[0] if denoiser is None else denoiser
    if type(denoiser).__name__ == "UNetMotionModel":
        return denoiser.time_embedding
    for name in ("conv_in", "x_embedder", "patch_embedding", "img_in", "pos_embed", "patch_embed", "proj_in",
                 "t_embedder"):
        if hasattr(denoiser, name):
            return getattr(denoiser, name)


class RowCounter:
    """Counts the rows the denoisers really evaluate, with a forward pre-hook on each one's first layer."""

    def __init__(self, pipe) -> None:
        self.rows = 0
        self.calls: list[int] = []
        self._handles = [first_layer(pipe, d).register_forward_pre_hook(self._count) for d in denoisers(pipe)]

    def _count(self, module, inputs) -> None:
        self.rows += inputs[0].shape[0]
        self.calls.append(inputs[0].shape[0])

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


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


@pytest.fixture(scope="module")
def tab():
    """A headless Chromium tab (tests/browser.py), shared by a module's tests; skipped where no Chromium is installed,
    except under GUIDANCE_REQUIRE_BROWSER (CI), where a missing browser fails."""
    from browser import browser, executable, required

    if executable() is None and not required():
        pytest.skip("no Chromium installed (CI installs it and sets GUIDANCE_REQUIRE_BROWSER=1)")
    with browser() as page:
        assert page is not None, "GUIDANCE_REQUIRE_BROWSER is set but no Chromium is installed"
        yield page
