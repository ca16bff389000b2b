"""The diffusers integration: `attach` / `run` / `fit_linear_ag` on standard pipelines, the session that wraps a
pipeline's denoiser and scheduler, `as_guider` (the same guidance as a guider of modular pipelines), per-family
adapters, and the bundled models and their pipelines.

This folder is installed as `guidance.pipelines` (see pyproject.toml and the README's "Layout"). Names are
imported on first use, so that `guidance.pipelines.schedulers` or `.bundled` cost no diffusers import.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SUPPORTED": ".adapters", "adapter_for": ".adapters", "attach": ".api", "fit_linear_ag": ".api", "run": ".api",
    "ClassConditionalPipeline": ".class_conditional", "GaussianMixtureDenoiser": ".gmm", "gmm_pipeline": ".gmm",
    "Session": ".session", "as_guider": ".guider", "GuidanceGuider": ".guider",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'guidance.pipelines' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)


__all__ = sorted(_EXPORTS)
