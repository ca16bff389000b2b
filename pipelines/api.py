"""The public entry points on a diffusers pipeline: attach, run and fit_linear_ag."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from pydantic import PrivateAttr

from guidance.errors import OUT_OF_MEMORY, GuidanceError
from guidance.plan import StepTable
from guidance.policies.always import Always
from guidance.policies.linear_ag import fit, step_modes, write
from guidance.spec import Guidance, load

from .session import Session


def attach(pipe: Any, spec: Any, telemetry: bool = True) -> Session:
    """A session to use as `with guidance.attach(pipe, spec) as session:`.

    Inside it call the pipeline yourself with any guidance_scale > 1 (Flux: true_cfg_scale > 1 and a negative
    prompt) and `callback_on_step_end=session.callback`; the spec decides the guidance.
    """
    return Session(pipe, spec, telemetry=telemetry)


def _with_callback(pipe: Any, kwargs: dict[str, Any], session: Session) -> dict[str, Any]:
    if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
        return kwargs  # DiT, PixArt: the session tracks steps from the denoiser and scheduler calls
    user = kwargs.get("callback_on_step_end")
    if user is None:
        return {**kwargs, "callback_on_step_end": session.callback}
    if isinstance(user, PipelineCallback | MultiPipelineCallbacks):
        callbacks = user.callbacks if isinstance(user, MultiPipelineCallbacks) else [user]
        return {**kwargs, "callback_on_step_end": MultiPipelineCallbacks([*callbacks, session.callback])}

    def both(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        callback_kwargs = user(pipeline, step, timestep, callback_kwargs)
        return session.callback(pipeline, step, timestep, callback_kwargs)

    return {**kwargs, "callback_on_step_end": both}


def run(pipe: Any, spec: Any, *, stats: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Call `pipe(**kwargs)` with the guidance `spec`; returns the pipeline's normal output.

    The pipeline's CFG batching is switched on for you (guidance_scale / Flux's true_cfg_scale); the spec's
    `scale` sets the strength. Pass a dict as `stats` to receive the session's statistics and telemetry.
    """
    session = Session(pipe, spec)
    kwargs = _with_callback(pipe, _prepared(session, kwargs), session)
    with session:
        try:
            out = pipe(**kwargs)
        except torch.cuda.OutOfMemoryError as error:
            if hasattr(error, "add_note"):
                error.add_note(OUT_OF_MEMORY)
            raise
    if stats is not None:
        stats.update(session.stats)
    return out


def _prepared(session: Session, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pipeline call's arguments for a session's run: CFG batching on, the call's generator for PCG's corrector
    noise, and NAG's negative prompt encoded once."""
    session.generator = kwargs.get("generator")
    reference = session.guidance.reference
    kwargs = session.adapter.run_kwargs(kwargs, needs_pipeline_reference=not reference.from_condition)
    attention = session.guidance.attention
    if attention is not None and attention.active:
        kwargs = session.adapter.nag_run_kwargs(kwargs)
        with torch.no_grad():
            session.nag_negative = session.adapter.nag_encode(kwargs)
    return kwargs


class _Recorder(Always):
    """Always evaluates the reference and keeps (c_k, u_k) of every step (for fitting LinearAG)."""

    _trajectory: list[tuple[torch.Tensor, torch.Tensor]] = PrivateAttr(default_factory=list)
    _steps: StepTable | None = PrivateAttr(None)

    def reset(self, batch_size: int, steps: StepTable) -> None:
        super().reset(batch_size, steps)
        self._trajectory, self._steps = [], steps

    def observe(self, index: int, samples: list[int], c: torch.Tensor, u: torch.Tensor | None,
                cosine: torch.Tensor | None) -> None:
        if u is None:
            raise GuidanceError("Fitting LinearAG needs the reference at every step; use a spec whose schedule "
                                "guides every step (e.g. constant) and policy always.")
        # copies (a separate-calls pipeline overwrites its conditional output with g in place after the step)
        self._trajectory.append((c.detach().to("cpu", torch.float32, copy=True),
                                 u.detach().to("cpu", torch.float32, copy=True)))


def fit_linear_ag(pipe: Any, spec: Any, path: str | Path, *, guided_fraction: float = 0.5, real_every: int = 2,
                  **kwargs: Any) -> Path:
    """Record CFG trajectories of `pipe(**kwargs)` under `spec` and write LinearAG coefficients to `path`.

    The first `guided_fraction` of the steps alternate evaluated (every `real_every`-th step) and estimated
    references; the rest is conditional only. Use as many prompts/labels and seeds as the call holds.
    """
    if not 0.0 < guided_fraction <= 1.0 or real_every < 1:
        raise GuidanceError(f"guided_fraction must be in (0, 1] and real_every ≥ 1 (got {guided_fraction}, "
                            f"{real_every}).")
    base: Guidance = load(spec)
    recorded = Guidance(scale=base.scale, rule=base.rule, reference=base.reference, schedule=base.schedule,
                        policy=_Recorder(), rescale=base.rescale, terms=base.terms, attention=base.attention)
    session = Session(pipe, recorded, telemetry=False)
    policy = session.guidance.policy
    kwargs = _prepared(session, kwargs)
    with session, torch.no_grad():
        pipe(**kwargs)
    steps = policy._steps
    entries = fit(policy._trajectory, step_modes(len(steps), guided_fraction, real_every))
    meta = {"fitted_on": {"guidance": base.to_spec(), "samples": session._runs[-1].batch_size,
                          "guided_fraction": guided_fraction, "real_every": real_every}}
    return write(path, steps, entries, meta)
