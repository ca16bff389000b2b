"""The host-side step table of a scheduler's current run (built once per pipeline call)."""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from guidance.errors import GuidanceError
from guidance.plan import StepTable

# Settings that change the steps a scheduler takes (part of a LinearAG fit's identity).
_SHAPING = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "timestep_spacing",
            "steps_offset", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "shift",
            "use_dynamic_shifting", "algorithm_type", "solver_order", "final_sigmas_type", "set_alpha_to_one",
            "rescale_betas_zero_snr")


def is_flow(scheduler: Any) -> bool:
    config = scheduler.config
    return ("FlowMatch" in type(scheduler).__name__ or bool(config.get("use_flow_sigmas", False))
            or config.get("prediction_type") == "flow_prediction")


def prediction_type(scheduler: Any) -> str:
    if is_flow(scheduler):
        return "flow"
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise GuidanceError(f"Unsupported prediction type {kind!r} of {type(scheduler).__name__}. Supported: "
                            "epsilon, v_prediction, sample, and flow matching.")
    return kind


def sampler_id(scheduler: Any) -> str:
    config = {k: scheduler.config[k] for k in _SHAPING if k in scheduler.config}
    return f"{type(scheduler).__name__}{json.dumps(config, sort_keys=True, default=str)}"


def step_table(scheduler: Any, boundary: float | None = None) -> StepTable:
    """a, s, σ and progress of every step of the run the scheduler was just set up for; `boundary`: where a
    two-expert pipeline switches denoisers (StepTable.boundary)."""
    timesteps = [float(t) for t in scheduler.timesteps.tolist()]  # the run's one read from the device
    n = len(timesteps)
    sigmas = getattr(scheduler, "sigmas", None)
    kind = prediction_type(scheduler)
    if isinstance(sigmas, torch.Tensor) and len(sigmas) >= n:
        sigma = sigmas[:n].tolist()
        if kind == "flow":
            a, s = [1.0 - x for x in sigma], sigma
        else:
            a = [1.0 / math.sqrt(1.0 + x * x) for x in sigma]
            s = [x * ai for x, ai in zip(sigma, a, strict=True)]
    elif getattr(scheduler, "alphas_cumprod", None) is not None:
        alphas = scheduler.alphas_cumprod.tolist()
        bar = [alphas[round(t)] for t in timesteps]
        a, s = [math.sqrt(x) for x in bar], [math.sqrt(1.0 - x) for x in bar]
    else:
        raise GuidanceError(f"The scheduler {type(scheduler).__name__} exposes neither `sigmas` nor "
                            "`alphas_cumprod`, so the noise level of a step is unknown. Use a diffusers "
                            "DDIM, DDPM, Euler, DPM-Solver, UniPC, PNDM or flow-matching Euler scheduler.")
    return StepTable(timesteps=tuple(timesteps), a=tuple(a), s=tuple(s),
                     num_train_timesteps=int(scheduler.config.num_train_timesteps), prediction_type=kind,
                     sampler=sampler_id(scheduler), boundary=boundary)
