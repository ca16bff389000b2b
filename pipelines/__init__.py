"""diffusers integration: attach/run on standard pipelines, per-family adapters, tiny builders."""

from .adapters import SUPPORTED, adapter_for
from .api import attach, fit_linear_ag, run
from .session import Session

__all__ = ["SUPPORTED", "Session", "adapter_for", "attach", "fit_linear_ag", "run"]
