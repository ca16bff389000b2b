"""PCG's corrector on a pipeline (the math: guidance/rules/pcg.py).

The pipeline's own steps are the predictor: the session answers them with the conditional prediction and the
scheduler takes its DDIM step from level i to j. Then, before the pipeline sees the new latents, K Langevin iterations
run at level j. Each replays the pipeline's denoiser calls of step i — with the new latents in place of x_i and the
timestep of level j, on the denoiser the pipeline runs at level j — through the family's call protocol, so rows,
references, terms and telemetry work as in a pipeline step (a record per iteration, `corrector` = k).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from guidance.errors import GuidanceError
from guidance.rules.pcg import PCG

from .call import DenoiserCall

if TYPE_CHECKING:
    from .session import Run, Session

# DDIM (CogVideoX's on its SNR-shifted ᾱ), and DDIM's flow-matching form
PREDICTORS = ("DDIMScheduler", "CogVideoXDDIMScheduler", "FlowMatchEulerDiscreteScheduler")


def check_predictor(scheduler: Any) -> None:
    """Raise unless the scheduler's step is a deterministic DDIM step."""
    name = type(scheduler).__name__
    if name not in PREDICTORS:
        raise GuidanceError(
            f"PCG's predictor is a DDIM step, and {name} is not DDIM. Use pipe.scheduler = "
            f"DDIMScheduler.from_config(pipe.scheduler.config) (flow-matching pipelines: their "
            "FlowMatchEulerDiscreteScheduler, which is DDIM for flow matching)."
        )
    if scheduler.config.get("stochastic_sampling", False):
        raise GuidanceError("PCG's predictor is the deterministic DDIM step; build the scheduler with "
                            "stochastic_sampling=False (the corrector adds the noise).")


def _latents_part(sample: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The leading part of the denoiser input `sample` (R rows) shaped like the scheduler's latents (B rows each)."""
    for dim in range(1, latents.ndim):
        sample = sample.narrow(dim, 0, latents.shape[dim])
    return sample


def _tiled(latents: torch.Tensor, rows: int) -> torch.Tensor:
    return latents.repeat(rows // latents.shape[0], *([1] * (latents.ndim - 1)))


class Corrector:
    """The K Langevin iterations after every predictor step of a run."""

    def __init__(self, rule: PCG) -> None:
        self.rule = rule

    def check_replay(self, session: Session, call: DenoiserCall, latents: torch.Tensor) -> None:
        """Raise unless the pipeline handed its denoiser the very latents it steps (tiled over the call's rows), the
        condition for replaying the call at other latents."""
        sample = call.sample
        if not isinstance(sample, torch.Tensor) or sample.ndim != latents.ndim or sample.shape[0] % latents.shape[0]:
            raise GuidanceError(f"PCG cannot replay the denoiser calls of {type(session.pipe).__name__}: its denoiser "
                                "input is not laid out like the latents it steps. Use another rule with it.")
        part = _latents_part(sample, latents)
        if part.shape[1:] != latents.shape[1:] or not torch.equal(part, _tiled(latents.to(part.dtype), part.shape[0])):
            raise GuidanceError(
                f"{type(session.pipe).__name__} gives its denoiser other values than the latents it steps (it scales "
                "or overwrites part of them), so PCG's corrector cannot evaluate the denoiser at its corrected "
                "latents. Use another rule with this pipeline (cfg with a DDPM scheduler is PCG's SDE limit: "
                "docs/CONVENTIONS.md §32)."
            )

    def replay(self, session: Session, call: DenoiserCall, latents: torch.Tensor, timestep: float) -> DenoiserCall:
        """`call` (of the previous step) at `latents` and the scheduler timestep `timestep`."""
        adapter = session.adapter
        sample = call.sample.clone()
        part = _latents_part(sample, latents)
        part.copy_(_tiled(latents.to(part.dtype), part.shape[0]))
        moved = call.with_arguments({**call.arguments, call.sample_name: sample})
        moved.set(adapter.timestep_field, adapter.call_timestep(call.get(adapter.timestep_field), timestep))
        return moved

    def correct(self, session: Session, run: Run, sample: torch.Tensor, latents: torch.Tensor,
                generator: Any) -> torch.Tensor:
        """The latents after K corrector iterations at the level after step `run.step` (`sample`: the step's input
        x_i, `latents`: the predictor's x_j, B rows each)."""
        calls = run.step_calls
        for call in calls:
            self.check_replay(session, call, sample)
        i, table = run.step, run.table
        j = i + 1
        timestep = table.timesteps[j]
        saved = (run.step, run.calls, run.carried)
        run.step = j
        try:
            for k in range(1, self.rule.corrector_steps + 1):
                run.correcting, run.carried, rows_before = k, None, session.rows
                session.route_at(timestep)
                for n, call in enumerate(calls, start=1):
                    run.calls = n
                    session.adapter.guide_call(session, self.replay(session, call, latents, timestep))
                run.records[-1].denoiser_rows = session.rows - rows_before
                guided = session.adapter.scheduler_prediction(run.guided)
                noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
                latents = self.rule.langevin_step(latents, guided, noise, table.sigma[i], table.a[j], table.s[j],
                                                  table.prediction_type)
        finally:
            run.step, run.calls, run.carried = saved
            run.correcting = 0
        return latents
