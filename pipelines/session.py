"""The guidance session: wraps a pipeline's denoiser forward and scheduler for the duration of `attach`.

At every step the wrapper evaluates only the rows the policy and schedule need (conditional rows, plus the
reference rows of the guided samples, with ICG conditions or TSG time embeddings swapped in), applies the
rule, and returns the guided prediction g in BOTH halves of the pipeline's CFG batch, so the pipeline's own
`u + s·(c − u)` yields exactly g. CFG++ additionally corrects the scheduler's step. On exit the denoiser, its
forward, its hooks and the scheduler are exactly as before.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.callbacks import PipelineCallback

from guidance.errors import GuidanceError
from guidance.plan import StepTable
from guidance.rules.base import RuleStep
from guidance.samplers import SamplerCorrection, correction_for
from guidance.spaces import from_x0, per_sample_cosine, per_sample_norm, to_x0
from guidance.spec import Guidance, load, rescale_guided
from guidance.telemetry import StepRecord

from .adapters import adapter_for
from .call import DenoiserCall, RowView
from .stepping import step_table


class GuidanceCallback(PipelineCallback):
    """`callback_on_step_end` of a session: marks the end of each pipeline step in the telemetry."""

    tensor_inputs = ["latents"]

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session

    def callback_fn(self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        self._session._step_end(step_index)
        return callback_kwargs


@dataclass
class _Run:
    """State of one pipeline call."""

    table: StepTable
    scales: list[float | None]
    step: int | None = None  # index into the scheduler's timesteps, located at the first denoiser call
    batch: int = 0
    calls: int = 0  # denoiser calls seen in this step (Flux: 0 conditional, 1 negative; later ones pass through)
    rows_before: int = 0  # session row count when this step began
    waiting: tuple | None = None  # Flux: (x, c, samples, w) until the negative-prompt call
    done: torch.Tensor | None = None  # Flux: the step's guided output, returned again to the negative call
    correction: tuple[torch.Tensor, torch.Tensor] | None = None  # CFG++: (u, g) for the scheduler step
    records: list[StepRecord] = field(default_factory=list)


def _method_signature(obj: Any, name: str) -> inspect.Signature:
    """The signature of the class's own method (instance wrappers by others may hide it behind *args)."""
    signature = inspect.signature(getattr(type(obj), name))
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _row_index(rows: list[int], device: torch.device) -> torch.Tensor:
    """Row indices on `device`, copied without blocking the host (no synchronisation on the hot path)."""
    return torch.tensor(rows).to(device, non_blocking=True)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else next(iter(out.values()))


def _replace_first(out: Any, tensor: torch.Tensor) -> Any:
    if isinstance(out, tuple):
        return (tensor, *out[1:])
    key = next(iter(out.keys()))
    return type(out)(**{**out, key: tensor})


class Session:
    """A guidance method attached to one pipeline; use as a context manager (see `guidance.attach`)."""

    def __init__(self, pipe: Any, spec: Any, telemetry: bool = True) -> None:
        self.pipe = pipe
        self.guidance: Guidance = load(spec).model_copy(deep=True)
        self.adapter = adapter_for(pipe)
        self.telemetry = telemetry
        self.callback = GuidanceCallback(self)
        self._rows = 0
        self._calls = 0
        self._runs: list[_Run] = []
        self._run: _Run | None = None
        self._patches: list[tuple[Any, str, bool, Any]] = []
        self._hooks: list[Any] = []
        self._tsg: tuple[slice, float] | None = None
        self._tsg_noise: torch.Tensor | None = None
        self._scheduler = pipe.scheduler
        self._correction: SamplerCorrection | None = None
        if self.guidance.rule.corrects_sampler:
            self._correction = correction_for(self._scheduler)

    # ---------------------------------------------------------------- install / restore

    def _patch(self, obj: Any, name: str, handler: Any) -> Any:
        """Route obj.<name> through `handler` (keeping the original's signature); returns the original."""
        original = getattr(obj, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return handler(*args, **kwargs)

        self._patches.append((obj, name, name in obj.__dict__, obj.__dict__.get(name)))
        setattr(obj, name, wrapper)
        return original

    def __enter__(self) -> Session:
        if self._patches:
            raise GuidanceError("This guidance session is already attached; use one `with` block per session.")
        denoiser = self.adapter.denoiser
        try:
            # A module compiled in place (`module.compile()`) is called through `_compiled_call_impl`: routing that
            # keeps the plugin outside the compiled graph, as it is for `torch.compile(module)`.
            entry = "forward" if getattr(denoiser, "_compiled_call_impl", None) is None else "_compiled_call_impl"
            self._forward_original = self._patch(denoiser, entry, self._forward)
            self._signature = _method_signature(getattr(denoiser, "_orig_mod", denoiser), "forward")
            self._set_timesteps = self._patch(self._scheduler, "set_timesteps", self._on_set_timesteps)
            self._step = self._patch(self._scheduler, "step", self._on_step)
            self._step_signature = _method_signature(self._scheduler, "step")
            if self.guidance.reference.perturbs_time_embedding:
                self._hooks = [m.register_forward_hook(self._perturb_time) for m in self.adapter.time_embedders()]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for obj, name, had, old in reversed(self._patches):
            if had:
                setattr(obj, name, old)
            else:
                delattr(obj, name)
        self._patches = []
        self._run = None

    # ---------------------------------------------------------------- stats

    @property
    def stats(self) -> dict[str, Any]:
        """denoiser_rows / denoiser_calls (all evaluated), runs, and per-step telemetry `steps`."""
        return {"denoiser_rows": self._rows, "denoiser_calls": self._calls, "runs": len(self._runs),
                "steps": [r.as_dict() for run in self._runs for r in run.records]}

    # ---------------------------------------------------------------- scheduler side

    def _on_set_timesteps(self, *args: Any, **kwargs: Any) -> Any:
        result = self._set_timesteps(*args, **kwargs)
        table = step_table(self._scheduler)
        g = self.guidance
        self._run = _Run(table=table, scales=g.rule.step_scales(g.scale, g.schedule, table))
        self._runs.append(self._run)
        g.rule.reset()
        g.reference.reset()
        if self._correction is not None:
            self._correction.reset()
        return result

    def _on_step(self, *args: Any, **kwargs: Any) -> Any:
        run = self._run
        out = self._step(*args, **kwargs)
        if run is None or run.step is None:
            return out
        if run.waiting is not None:
            raise GuidanceError(
                "Flux ran no negative-prompt call, so reference `uncond` has nothing to contrast with. Pass a "
                "negative prompt and true_cfg_scale > 1 (guidance.run does both), or use reference icg or tsg."
            )
        if run.correction is not None and self._correction is not None:
            bound = self._step_signature.bind(*args, **kwargs)
            bound.apply_defaults()
            u, g = run.correction
            prev = self._correction.correct(self._scheduler, run.step, run.table, bound.arguments["sample"],
                                            _first(out), u, g, bound.arguments)
            out = _replace_first(out, prev)
        if run.records and run.records[-1].step == run.step:
            run.records[-1].denoiser_rows = self._rows - run.rows_before
        run.step += 1
        run.calls, run.done, run.correction, run.rows_before = 0, None, None, self._rows
        return out

    def _step_end(self, pipeline_step: int) -> None:
        run = self._run
        if run is not None and run.records:
            run.records[-1].pipeline_step = pipeline_step

    # ---------------------------------------------------------------- denoiser side

    def _evaluate(self, call: DenoiserCall, tsg_rows: slice | None = None) -> Any:
        self._rows += call.batch
        self._calls += 1
        if tsg_rows is None or tsg_rows.stop == tsg_rows.start:
            return call.run(self._forward_original)
        run = self._run
        self._tsg = (tsg_rows, run.table.timesteps[run.step] / run.table.num_train_timesteps)
        self._tsg_noise = None
        try:
            return call.run(self._forward_original)
        finally:
            self._tsg = None

    def _perturb_time(self, module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self._tsg is None:
            return None
        rows, t = self._tsg
        if self._tsg_noise is None:
            noise = self.guidance.reference.time_noise(output[rows].shape, t)
            self._tsg_noise = noise.to(output.device, output.dtype, non_blocking=True)
        perturbed = output.clone()
        perturbed[rows] = perturbed[rows] + self._tsg_noise
        return perturbed

    def _output(self, call: DenoiserCall, tensor: torch.Tensor) -> Any:
        if call.arguments.get("return_dict", True) is False:
            return (tensor,)
        return self.adapter.output_class(sample=tensor)

    def _locate(self, call: DenoiserCall, batch: int) -> None:
        """First denoiser call of a run: find the step (img2img starts late) and reset batch-sized state."""
        run = self._run
        t = float(call.get(("timestep",)).flatten()[0]) * self.adapter.timestep_scale
        run.step = min(range(len(run.table)), key=lambda k: abs(run.table.timesteps[k] - t))
        run.batch, run.rows_before = batch, self._rows
        self.guidance.policy.reset(batch, run.table)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.pipe.scheduler is not self._scheduler:
            raise GuidanceError("The pipeline's scheduler was replaced while guidance was attached. Set the "
                                "scheduler first, then attach (or call guidance.run).")
        call = DenoiserCall.bind(self._signature, args, kwargs, self.adapter.skip_keys)
        run = self._run
        if run is None or (run.step is not None and run.step >= len(run.table)):
            return self._evaluate(call)
        separate = self.adapter.separate_calls
        if run.step is None:
            if not separate:
                self.adapter.check_doubled(call)
            self._locate(call, call.batch if separate else call.batch // 2)
        run.calls += 1
        if run.calls > (2 if separate else 1):
            return self._evaluate(call)
        return self._separate_call(call) if separate else self._doubled_call(call)

    def _plan(self, batch: int) -> tuple[float | None, list[int]]:
        run = self._run
        w = run.scales[run.step]
        return w, (self.guidance.policy.reference_samples(run.step) if w is not None else [])

    def _reference_call(self, call: DenoiserCall, rows: slice, samples: list[int], batch: int) -> DenoiserCall:
        if len(samples) == batch:
            return call.take(rows)
        return call.take(_row_index([rows.start + b for b in samples], call.sample.device))

    def _with_reference(self, cond: DenoiserCall, reference: DenoiserCall) -> tuple[DenoiserCall, slice]:
        """cond rows followed by reference rows, conditions changed by the reference strategy."""
        joined = DenoiserCall.concat([cond, reference])
        rows = slice(cond.batch, joined.batch)
        self.guidance.reference.prepare(RowView(joined, rows, self.adapter, self.pipe))
        return joined, rows

    def _zero(self, call: DenoiserCall, sample: torch.Tensor, copies: int) -> Any:
        """CFG-Zero*'s zero-init step: output 0 without evaluating the denoiser."""
        self._record(self._run.scales[self._run.step], branches=(), reference_rows=0)
        self._run.done = torch.cat([self.adapter.zero_output(sample)] * copies)
        return self._output(call, self._run.done)

    def _doubled_call(self, call: DenoiserCall) -> Any:
        run = self._run
        batch = run.batch
        cond_rows, ref_rows = self.adapter.cond_rows(batch), self.adapter.reference_rows(batch)
        w, samples = self._plan(batch)
        if w is not None and self.guidance.rule.outputs_zero(run.step):
            return self._zero(call, call.sample[cond_rows], 2)
        x = call.sample[cond_rows]
        reference = self.guidance.reference
        if len(samples) == batch and not reference.from_condition:
            out = self._evaluate(call)
            first = _first(out)
            c, u = first[cond_rows], first[ref_rows]
        elif samples:
            source = cond_rows if reference.from_condition else ref_rows
            joined, rows = self._with_reference(call.take(cond_rows),
                                                self._reference_call(call, source, samples, batch))
            out = self._evaluate(joined, rows if reference.perturbs_time_embedding else None)
            c, u = _first(out)[:batch], _first(out)[batch:]
        else:
            out = self._evaluate(call.take(cond_rows))
            c, u = _first(out), None
        g = self._guide(w, x, c, u, samples)
        return _replace_first(out, torch.cat([g, g]))

    def _separate_call(self, call: DenoiserCall) -> Any:
        run = self._run
        if run.calls == 2:  # Flux's negative-prompt call
            if run.waiting is None:
                return self._output(call, run.done)
            x, c, samples, w = run.waiting
            run.waiting = None
            out = self._evaluate(self._reference_call(call, slice(0, run.batch), samples, run.batch))
            c.copy_(self._guide(w, x, c, _first(out), samples))
            run.done = c
            return _replace_first(out, c)
        batch = run.batch
        w, samples = self._plan(batch)
        if w is not None and self.guidance.rule.outputs_zero(run.step):
            return self._zero(call, call.sample, 1)
        reference = self.guidance.reference
        if samples and not reference.from_condition:
            out = self._evaluate(call)
            run.waiting = (call.sample, _first(out), samples, w)
            return out
        if samples:
            joined, rows = self._with_reference(call, self._reference_call(call, slice(0, batch), samples, batch))
            out = self._evaluate(joined, rows if reference.perturbs_time_embedding else None)
            c, u = _first(out)[:batch], _first(out)[batch:]
        else:
            out = self._evaluate(call)
            c, u = _first(out), None
        run.done = self._guide(w, call.sample, c, u, samples)
        return _replace_first(out, run.done)

    # ---------------------------------------------------------------- the guided combination

    def _guide(self, w: float | None, x: torch.Tensor, c: torch.Tensor, u: torch.Tensor | None,
               samples: list[int]) -> torch.Tensor:
        """g for all samples from c (all) and u (the evaluated `samples`); D_c where unguided."""
        run, g = self._run, self.guidance
        k, batch = run.step, run.batch
        channels = self.adapter.prediction_channels()
        cp = c[:, :channels] if channels else c
        estimated = w is not None and not samples
        if estimated:
            u = g.policy.estimate(k, cp)
            estimated = u is not None
            samples = list(range(batch)) if estimated else []
        elif u is not None and channels:
            u = u[:, :channels]
        if w is None or not samples:
            g.policy.observe(k, [], cp, None, None)
            self._record(w, branches=("cond",), reference_rows=0)
            return c
        every = len(samples) == batch
        sel: slice | torch.Tensor = slice(None) if every else _row_index(samples, c.device)
        cg, xg = cp[sel], x[sel]
        if cg.dtype != u.dtype:
            u = u.to(cg.dtype)
        a, s, kind = run.table.a[k], run.table.s[k], run.table.prediction_type
        need_x0 = g.rule.space == "x0" or self.telemetry or g.policy.uses_cosine
        x0_c, x0_u = (to_x0(cg, xg, a, s, kind), to_x0(u, xg, a, s, kind)) if need_x0 else (None, None)
        step = RuleStep(index=k, samples=sel, batch_size=batch)
        if g.rule.space == "x0":
            guided = from_x0(g.rule.combine(x0_c, x0_u, w, step), xg, a, s, kind).to(cg.dtype)
        else:
            guided = g.rule.combine(cg, u, w, step)
        if g.rescale:
            guided = rescale_guided(guided, cg, g.rescale)
        cosine = per_sample_cosine(x0_c, x0_u) if need_x0 else None
        full = guided if every else cp.index_copy(0, sel, guided)
        g.policy.observe(k, samples, cp, u, cosine)
        if self._correction is not None:
            run.correction = (u if every else full.index_copy(0, sel, u), full)
        self._record(w, branches=("cond", "estimate" if estimated else "reference"),
                     reference_rows=0 if estimated else len(samples), cosine=cosine,
                     delta_norm=per_sample_norm(x0_c - x0_u).flatten() if self.telemetry else None)
        return torch.cat([full, c[:, channels:]], dim=1) if channels else full

    def _record(self, w: float | None, branches: tuple[str, ...], reference_rows: int,
                cosine: torch.Tensor | None = None, delta_norm: torch.Tensor | None = None) -> None:
        run = self._run
        k = run.step
        run.records.append(StepRecord(
            run=len(self._runs) - 1, step=k, t=run.table.timesteps[k], sigma=run.table.sigma[k],
            w=1.0 if w is None else w, branches=branches, reference_rows=reference_rows,
            cosine=cosine if self.telemetry else None, delta_norm=delta_norm))
