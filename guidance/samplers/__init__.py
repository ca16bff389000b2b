"""CFG++ sampler corrections, one per supported scheduler."""

from __future__ import annotations

from typing import Any

from ..errors import GuidanceError
from .base import SamplerCorrection
from .ddim import CogVideoXDDIMCorrection, DDIMCorrection
from .dpmpp_2m import DPMPP2MCorrection
from .euler import EulerCorrection
from .flow_euler import FlowEulerCorrection

CORRECTIONS: dict[str, type[SamplerCorrection]] = {
    cls.scheduler_class: cls
    for cls in (DDIMCorrection, CogVideoXDDIMCorrection, EulerCorrection, DPMPP2MCorrection, FlowEulerCorrection)
}


def correction_for(scheduler: Any) -> SamplerCorrection:
    """The CFG++ correction for this scheduler, checked against its settings."""
    cls = CORRECTIONS.get(type(scheduler).__name__)
    if cls is None:
        raise GuidanceError(
            f"CFG++ does not support the scheduler {type(scheduler).__name__}. Supported: "
            f"{', '.join(CORRECTIONS)} (e.g. pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config))."
        )
    correction = cls()
    correction.check(scheduler)
    return correction


__all__ = ["CORRECTIONS", "SamplerCorrection", "correction_for"]
