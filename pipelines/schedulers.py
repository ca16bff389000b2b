"""The schedulers a run config names (`sampler.scheduler`), each a diffusers class built from the pipeline's own
scheduler config. Classes are looked up by name on first use, so naming them costs no diffusers import."""

from __future__ import annotations

from typing import Any

from guidance.errors import GuidanceError, shorten

# name: (diffusers class, settings that override the pipeline's scheduler config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddpm": ("DDPMScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
}
FLOW = ("flow_euler",)


def set_scheduler(pipe: Any, name: str) -> Any:
    """Swap the pipeline's scheduler for `name` (built from its current config); "default" keeps it."""
    if name == "default":
        return pipe
    if name not in SCHEDULERS:
        raise GuidanceError(f"Unknown scheduler {shorten(name)}; choose default or one of: {', '.join(SCHEDULERS)}.")
    import diffusers

    is_flow = isinstance(pipe.scheduler, diffusers.FlowMatchEulerDiscreteScheduler)
    if is_flow != (name in FLOW):
        kind = "a flow-matching" if is_flow else "a diffusion"
        fits = ", ".join(n for n in SCHEDULERS if (n in FLOW) == is_flow)
        raise GuidanceError(f"sampler.scheduler {name!r} does not fit {kind} model ({type(pipe).__name__}); "
                            f"use {fits}.")
    class_name, overrides = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
    return pipe
