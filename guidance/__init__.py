"""diffusers-guidance: classifier-free-guidance improvements on unmodified diffusers pipelines.

    import guidance
    out = guidance.run(pipe, {"rule": "apg", "scale": 10}, prompt="a cat", num_inference_steps=30)
    with guidance.attach(pipe, spec) as session:
        out = pipe(prompt="a cat", guidance_scale=2.0, callback_on_step_end=session.callback)
    modular.update_components(guider=guidance.as_guider(spec, scheduler=modular.scheduler))  # modular pipelines
"""

from __future__ import annotations

from typing import Any

from .errors import GuidanceError
from .policies import POLICIES
from .references import REFERENCES
from .rules import RULES
from .schedules import SCHEDULES
from .spec import Guidance, load

__version__ = "0.1.0"

_PIPELINE_API = ("as_guider", "attach", "run", "fit_linear_ag", "Session")


def __getattr__(name: str) -> Any:
    """attach / run / fit_linear_ag / as_guider live with the diffusers integration (imported on first use)."""
    if name in _PIPELINE_API:
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'guidance' has no attribute {name!r}")


__all__ = ["POLICIES", "REFERENCES", "RULES", "SCHEDULES", "Guidance", "GuidanceError", "__version__", "as_guider",
           "attach", "fit_linear_ag", "load", "run"]
