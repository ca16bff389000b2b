"""The one error type the library raises for user-facing problems, and helpers for its messages."""

from __future__ import annotations

from typing import Any


class GuidanceError(ValueError):
    """A problem with a guidance spec, config, pipeline or scheduler.

    The message is one paragraph that names the problem and how to fix it.
    """


OUT_OF_MEMORY = (
    "The device ran out of memory. Make each pipeline call smaller (fewer images per call: sampler.batch or "
    "num_images_per_prompt; a smaller height and width), load the model in float16 or bfloat16 (model.dtype), or "
    "offload it (pipe.enable_model_cpu_offload() or enable_sequential_cpu_offload() from Python)."
)


def cut(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters (the last one an ellipsis)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shorten(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: error messages echo bad input, never pages of it."""
    return cut(repr(value), limit)
