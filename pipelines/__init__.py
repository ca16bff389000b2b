"""diffusers integration: attach/run on standard pipelines, per-family adapters, tiny builders."""

from .adapters import SUPPORTED, adapter_for
from .api import attach, fit_linear_ag, run
from .class_conditional import ClassConditionalPipeline
from .gmm import GaussianMixtureDenoiser, gmm_pipeline
from .session import Session

__all__ = ["SUPPORTED", "ClassConditionalPipeline", "GaussianMixtureDenoiser", "Session", "adapter_for", "attach",
           "fit_linear_ag", "gmm_pipeline", "run"]
