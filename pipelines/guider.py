"""Every strategy as a diffusers guider (`BaseGuidance`) for modular pipelines: `as_guider(spec, scheduler)`.

A modular pipeline's denoise loop asks its guider at every step which batches to evaluate (`prepare_inputs`), calls
the denoiser once per batch between `prepare_models` and `cleanup_models`, and hands the outputs to the guider, which
returns the guided prediction. This guider plans a step as a session does (the step's scale from the schedule, the
samples the policy guides, the active terms) and combines with `guidance.step.guided_step`, so the math is
guidance.run's:

- Batches: `pred_cond` (the conditional inputs), `pred_uncond` (the pipeline's negative inputs: reference `uncond`),
  `pred_reference` (a main reference built from the conditional inputs: icg, tsg, pag, …) and `pred_term_<k>` for
  every term active at the step. A conditional-only step (w = 1, every sample switched off by AG, a LinearAG
  estimate, CFG-Zero*'s zero-init) runs `pred_cond` alone.
- Inputs: a forward pre-hook on the denoiser (installed by prepare_models, removed by cleanup_models) reads x_t for
  the x̂0 rules, lets an icg reference redraw the batch's condition, and tells the reference's perturbation — the
  session's own (tsg's time embedding, pag's identity attention, slg's skipped blocks) — that the batch is its rows.
- Noise levels (x̂0 rules, AG's cosine, σ schedules, tsg's t) come from the pipeline's scheduler, read when a
  pipeline call begins as a session reads them (pipelines/stepping.py); diffusers gives a guider only the timestep,
  so the guider is given the scheduler.
- AG switches per sample, but the loop hands every batch the latents of all B samples: while any sample is still
  guided the reference batch holds all B rows, and the switched samples keep D_c (guidance.run's result; the rows
  saved are per step, not per sample, and icg/tsg draw their noise for all B rows).
- autoguidance's batch runs on its weaker network; CFG++'s scheduler correction is folded into the prediction the
  loop steps with (single-step schedulers, `SingleStepCorrection.guided_prediction`).

What needs more than the loop's own denoiser calls (`Strategy.guider_refusal`: pcg's corrector, gfcg on a
class-conditional pipeline) is refused when the guider is made. diffusers 0.35 hands `prepare_inputs` the block
state and its input fields and unpacks `(prediction, scheduler kwargs)` from the guider; later versions hand it the
fields' (conditional, negative) values and read a `GuiderOutput`: both are served (docs/CONVENTIONS.md §34).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.guiders.guider_utils import BaseGuidance

from guidance.errors import GuidanceError
from guidance.plan import StepTable
from guidance.references.base import Reference
from guidance.samplers import correction_for
from guidance.samplers.base import SingleStepCorrection
from guidance.spec import Guidance, Term, load
from guidance.step import StepPoint, TermInput, guided_step

from .adapters import Adapter, adapter_for
from .call import DenoiserCall, RowView
from .perturbations import Perturbation, RowScope, perturbation_for
from .perturbations.network import WeakerNetwork
from .session import _method_signature
from .stepping import step_table

try:  # diffusers ≥ 0.36 reads the guided prediction from a GuiderOutput
    from diffusers.guiders.guider_utils import GuiderOutput
except ImportError:  # 0.35: a (prediction, scheduler step kwargs) pair
    GuiderOutput = None


def check_guider(guidance: Guidance) -> None:
    """Raise for a spec whose strategies a guider cannot serve (their `guider_refusal`)."""
    references = [guidance.reference, *(term.reference for term in guidance.terms)]
    strategies = [guidance.rule, guidance.schedule, guidance.policy, *(term.rule for term in guidance.terms),
                  *(m for r in references for m in getattr(r, "of", [r])),
                  *([guidance.attention] if guidance.attention is not None else [])]
    for strategy in strategies:
        if strategy.guider_refusal:
            raise GuidanceError(
                f"{strategy.axis.capitalize()} '{strategy.name}' cannot run as a diffusers guider: "
                f"{strategy.guider_refusal}. Use guidance.run on the family's standard pipeline for it.")


class ModularComponents:
    """What a family adapter reads of a pipeline, given by a modular pipeline's denoiser and scheduler."""

    def __init__(self, denoiser: torch.nn.Module, scheduler: Any) -> None:
        unet = "UNet" in type(getattr(denoiser, "_orig_mod", denoiser)).__name__
        setattr(self, "unet" if unet else "transformer", denoiser)
        self.scheduler = scheduler
        self.config: dict[str, Any] = {}  # no second expert's boundary


@dataclass(frozen=True)
class Condition:
    """One batch of a step: its name (the prediction's key), whether it takes the pipeline's negative inputs, and the
    reference that prepares its inputs and perturbs the denoiser for it (None: as given)."""

    name: str
    negative: bool = False
    reference: Reference | None = None


@dataclass
class GuiderRun:
    """One pipeline call: the step table, the scales of every step (the terms' too), the table index of the loop's
    step 0 (img2img starts late; a second expert's guider starts mid-loop), the batch size."""

    table: StepTable
    scales: list[float | None]
    term_scales: list[list[float | None]]
    offset: int
    batch_size: int = 0


class GuidanceGuider(BaseGuidance):
    """A guidance spec as a diffusers guider; make it with `guidance.as_guider`. Its config is the spec, so
    `save_pretrained`, `from_pretrained`, `from_config` and `new()` give an equal guider (without its scheduler: set
    `guider.scheduler`)."""

    _input_predictions = ["pred_cond", "pred_uncond"]  # diffusers' check; the batches are planned per step

    def __init__(self, spec: Any = None) -> None:
        super().__init__()
        self.guidance = load(spec).model_copy(deep=True)  # a Guidance keeps a module given to autoguidance
        check_guider(self.guidance)
        self.register_to_config(spec=self.guidance.to_spec())
        self.scheduler: Any = None
        self._run: GuiderRun | None = None
        self._index = 0
        self._w: float | None = None
        self._samples: list[int] = []
        self._terms: list[tuple[int, Term, float]] = []
        self._zero = False
        self._conditions: list[Condition] | None = None  # the step's batches, from prepare_inputs to forward
        self._adapter: Adapter | None = None
        self._perturbations: dict[int, Perturbation] = {}
        self._scope = RowScope()
        self._open = ExitStack()  # what prepare_models installed, undone by cleanup_models
        self._x: torch.Tensor | None = None
        self._correction: SingleStepCorrection | None = None  # CFG++: its step, folded into the prediction

    # ---------------------------------------------------------------- the step's plan

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.Tensor) -> None:
        """A step begins. A pipeline call begins at the loop's step 0, or where the time goes up again (a guider that
        serves only a later part of the loop, as a second expert's does); there its step is located in the
        scheduler's timesteps by its time, and the loop's later steps follow it one by one."""
        super().set_state(step, num_inference_steps, timestep)
        t, run = float(timestep), self._run
        if step == 0 or run is None or t > run.table.timesteps[self._index]:
            run = self._start_run(step, t)
        self._index = run.offset + step
        if not 0 <= self._index < len(run.table):
            raise GuidanceError(f"The loop's step {step} (t = {t:g}) is not among the scheduler's "
                                f"{len(run.table)} steps; set the scheduler's timesteps before the loop, as the "
                                "pipeline's own blocks do, and give the guider the pipeline's scheduler.")

    def _start_run(self, step: int, t: float) -> GuiderRun:
        if self.scheduler is None:
            raise GuidanceError("This guider has no scheduler, and a diffusers guider is given only the timestep, not "
                                "the noise level of a step. Pass the modular pipeline's scheduler: "
                                "guidance.as_guider(spec, scheduler=pipe.scheduler), or set guider.scheduler = "
                                "pipe.scheduler after loading a saved guider.")
        table = step_table(self.scheduler)
        spec = self.guidance
        if spec.rule.corrects_sampler:
            self._correction = self._cfgpp_correction()
        located = min(range(len(table)), key=lambda k: abs(table.timesteps[k] - t))
        self._run = GuiderRun(table, *spec.start_run(table), located - step)
        return self._run

    def _cfgpp_correction(self) -> SingleStepCorrection:
        """CFG++'s correction of the scheduler's step, which a guider folds into the prediction it returns: the step
        must be affine in it (the single-step schedulers)."""
        correction = correction_for(self.scheduler)
        if not isinstance(correction, SingleStepCorrection):
            raise GuidanceError(
                f"CFG++ as a diffusers guider needs a scheduler whose step depends on this step's prediction only "
                f"(DDIM, Euler, flow-matching Euler): {type(self.scheduler).__name__} keeps earlier predictions in "
                "its own state, which the guider cannot correct. Set a DDIM or Euler scheduler on the pipeline.")
        return correction

    def _plan(self, batch_size: int) -> None:
        """The step's batches, for a pipeline batch of `batch_size` samples."""
        run, k, spec = self._run, self._index, self.guidance
        if run.batch_size == 0:
            run.batch_size = batch_size
            spec.policy.reset(batch_size, run.table)
        self._w = run.scales[k] if self._enabled else None
        self._samples = spec.policy.reference_samples(k) if self._w is not None else []
        self._zero = self._w is not None and spec.rule.outputs_zero(k)
        self._conditions = [Condition("pred_cond")]
        self._terms = []
        if self._zero:
            return
        if self._samples:
            main = spec.reference
            self._conditions.append(Condition("pred_reference", reference=main) if main.from_condition
                                    else Condition("pred_uncond", negative=True))
        if self._enabled:
            self._terms = [(j, term, scales[k]) for j, (term, scales) in enumerate(zip(spec.terms, run.term_scales,
                                                                                     strict=True))
                           if scales[k] is not None]
        self._conditions += [Condition(f"pred_term_{j}", reference=term.reference) for j, term, _ in self._terms]

    @property
    def num_conditions(self) -> int:
        """The step's batches; between steps, the most a step of this spec asks for (a loop's text encoder prepares the
        negative inputs only when this is more than 1)."""
        if self._conditions is not None:
            return len(self._conditions)
        return 2 + len(self.guidance.terms) if self._enabled else 1

    @property
    def is_conditional(self) -> bool:
        """Whether the batch being evaluated takes the conditional inputs (references built from them do)."""
        conditions, count = self._conditions or [], self._count_prepared
        return not (0 < count <= len(conditions) and conditions[count - 1].negative)

    # ---------------------------------------------------------------- batches (both diffusers APIs)

    def prepare_inputs(self, data: Any, input_fields: dict[str, Any] | None = None) -> list[Any]:
        if isinstance(data, dict):  # each field's (conditional, negative) values, or one value for both
            return self._batches(lambda index, name: self._prepare_batch(data, index, name))
        fields = input_fields if input_fields is not None else self._input_fields  # 0.35: the block state
        return self._batches(lambda index, name: BaseGuidance._prepare_batch(fields, data, index, name))

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict[str, Any]) -> list[Any]:
        return self._batches(lambda index, name: self._prepare_batch_from_block_state(input_fields, data, index, name))

    def _batches(self, prepare: Any) -> list[Any]:
        cond = prepare(0, "pred_cond")
        sizes = [v.shape[0] for v in cond.as_dict().values() if isinstance(v, torch.Tensor) and v.ndim > 0]
        if not sizes:
            raise GuidanceError("The guider found no batched tensor among the denoiser inputs the loop gave it, so "
                                "it cannot tell the batch size; the loop must pass its condition embeddings.")
        self._plan(sizes[0])
        return [cond, *(prepare(int(c.negative), c.name) for c in self._conditions[1:])]

    # ---------------------------------------------------------------- the denoiser, per batch

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        self._count_prepared += 1
        condition = self._conditions[self._count_prepared - 1]
        adapter = self._adapter_for(denoiser)
        perturbation = None if condition.reference is None else self._perturbations.get(id(condition.reference))
        if perturbation is not None and perturbation.network is not None:  # autoguidance: the batch on its network
            self._open.enter_context(_forward_through(denoiser, perturbation.network))
        elif perturbation is not None:
            perturbation.install({})
            self._open.callback(perturbation.remove)
        signature = _method_signature(getattr(denoiser, "_orig_mod", denoiser), "forward")
        hook = functools.partial(self._before_forward, adapter, signature, condition, perturbation)
        self._open.callback(denoiser.register_forward_pre_hook(hook, with_kwargs=True).remove)

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        self._open.close()

    def _adapter_for(self, denoiser: torch.nn.Module) -> Adapter:
        """The family adapter of `denoiser` (made at its first batch, again when the denoiser or scheduler changes)."""
        adapter = self._adapter
        if adapter is None or adapter.denoiser is not denoiser or adapter.pipe.scheduler is not self.scheduler:
            adapter = adapter_for(ModularComponents(denoiser, self.scheduler))
            adapter.check_guidance(self.guidance)
            rule = self.guidance.rule
            if getattr(adapter, "rescales_to_conditional", False) and (rule.outputs_zero(0) or rule.corrects_sampler):
                why = ("is 0/0 at CFG-Zero*'s zero-init steps: set zero_init_steps: 0" if rule.outputs_zero(0) else
                       "is not linear, so no prediction carries CFG++'s step through it: use guidance.run on the "
                       "standard pipeline")
                raise GuidanceError(f"The {type(denoiser).__name__} loop rescales the guided prediction to the "
                                    f"conditional one's norm per token, which {why}.")
            references = [self.guidance.reference, *(term.reference for term in self.guidance.terms)]
            found = ((id(r), perturbation_for(r, adapter, self._scope)) for r in references)
            self._perturbations = {key: p for key, p in found if p is not None}
            for perturbation in self._perturbations.values():
                if isinstance(perturbation, WeakerNetwork):  # loaded once: it puts nothing on the denoiser
                    perturbation.install({})
            self._adapter = adapter
        return adapter

    def _before_forward(self, adapter: Adapter, signature: Any, condition: Condition,
                        perturbation: Perturbation | None, module: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Forward pre-hook: keep x_t of the conditional batch; let the batch's reference prepare its inputs and
        its perturbation take the batch's rows."""
        call = DenoiserCall.bind(signature, args, kwargs, adapter.skip_keys, adapter.batch_dims)
        adapter.check_call(call)
        if condition.name == "pred_cond":
            self._x = call.sample
        if condition.reference is None:
            return None
        rows = slice(0, call.batch)
        condition.reference.prepare(RowView(call, rows, adapter, adapter.pipe))
        if perturbation is not None:
            table = self._run.table
            perturbation.rows, perturbation.t = rows, table.timesteps[self._index] / table.num_train_timesteps
            perturbation.latent_size = tuple(call.sample.shape[-2:])
            perturbation.start_call()
            self._open.enter_context(self._scope.within(0, call.batch))
            self._open.callback(setattr, perturbation, "rows", None)
        positional = tuple(call.arguments[name] for name in call.positional)
        return positional, {k: v for k, v in call.arguments.items() if k not in call.positional}

    # ---------------------------------------------------------------- the combination

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None, **outputs: torch.Tensor
                ) -> Any:
        self._conditions = None  # the step is done
        reference_out = pred_uncond if pred_uncond is not None else outputs.get("pred_reference")
        if self._zero:  # CFG-Zero*'s zero-init
            return self._output(torch.zeros_like(pred_cond), pred_cond, reference_out)
        adapter, run, k, x = self._adapter, self._run, self._index, self._x
        cond = adapter.prediction(pred_cond, x)
        reference = None
        if reference_out is not None:
            reference = adapter.prediction(reference_out, x)
            if len(self._samples) < run.batch_size:  # AG: the samples still guided
                reference = reference[torch.tensor(self._samples, device=reference.device)]
        terms = [TermInput(term, s, adapter.prediction(outputs[f"pred_term_{j}"], x)) for j, term, s in self._terms]
        point = StepPoint(index=k, batch_size=run.batch_size, a=run.table.a[k], s=run.table.s[k],
                          prediction_type=run.table.prediction_type)
        step = guided_step(self.guidance, point, self._w, adapter.latents(x, cond), cond, reference, self._samples,
                           telemetry=False, terms=terms)
        prediction = step.prediction
        if self._correction is not None and step.reference is not None:
            prediction = self._correction.guided_prediction(self.scheduler, k, run.table, step.reference, prediction)
        return self._output(adapter.with_prediction(pred_cond, prediction), pred_cond, reference_out)

    @staticmethod
    def _output(pred: torch.Tensor, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None) -> Any:
        if GuiderOutput is None:
            return pred, {}
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)


@contextmanager
def _forward_through(denoiser: torch.nn.Module, network: torch.nn.Module) -> Iterator[None]:
    """The denoiser's calls answered by `network` (autoguidance's weaker model: same class and inputs); its forward
    attribute as before afterwards."""
    had, previous = "forward" in vars(denoiser), vars(denoiser).get("forward")
    object.__setattr__(denoiser, "forward", lambda *args, **kwargs: network(*args, **kwargs))
    try:
        yield
    finally:
        if had:
            object.__setattr__(denoiser, "forward", previous)
        else:
            del denoiser.forward


def as_guider(spec: Any = None, scheduler: Any = None) -> GuidanceGuider:
    """A diffusers guider applying `spec` (a mapping, YAML path or Guidance) in a modular pipeline, with the math of
    guidance.run: `pipe.update_components(guider=guidance.as_guider(spec, scheduler=pipe.scheduler))`."""
    guider = GuidanceGuider(spec=load(spec))
    guider.scheduler = scheduler
    return guider
