"""The guidance session: installs itself on a pipeline's denoiser forward and scheduler for the duration of
`attach`, dispatches every denoiser call of a run to the adapter's call protocol, and restores everything on exit.

Per pipeline call (a run) it keeps the step table and the step's scale; per step it locates the step, lets the
adapter's protocol evaluate only the rows the policy and schedule need, and hands the branches' predictions to
`guidance.step.guided_step`, the pure combination. CFG++ additionally corrects the scheduler's step; NAG guides the
conditional rows' attention inside their denoiser call (pipelines/nag.py). On exit the denoiser, its forward, its
hooks and the scheduler are exactly as before (docs/CONVENTIONS.md §11, §19).
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
from guidance.references.base import Reference
from guidance.samplers import SamplerCorrection, correction_for
from guidance.spaces import per_sample_norm, to_x0
from guidance.spec import Guidance, Term, load
from guidance.step import GuidedStep, StepPoint, TermInput, guided_step
from guidance.telemetry import StepRecord

from .adapters import adapter_for
from .bundled import bundled_classifier
from .caches import caches_on, check_run, check_spec
from .call import DenoiserCall, Group, RowView, first_output, with_first_output
from .correcting import Corrector, check_predictor
from .nag import NAGHook
from .perturbations import Perturbation, RowDispatch, RowScope, perturbation_for
from .stepping import step_table


def _per_sample(scale: float, reference: Reference, base: float) -> float | torch.Tensor:
    """`base + (scale − base)·f_b` per sample where the reference sets factors f (gfcg), else `scale`: a main
    term's w (base 1) or a term's s (base 0)."""
    factors = reference.scale_factors()
    return scale if factors is None else base + (scale - base) * factors


class StepEndCallback(PipelineCallback):
    """`callback_on_step_end` of a session: records each step's latent RMS per sample (`latent_rms` in the
    telemetry), the pipeline state that shows drift and saturation over a run. Kept on the device until read."""

    tensor_inputs = ["latents"]

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session

    def callback_fn(self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        self._session.record_latents(callback_kwargs["latents"])
        return callback_kwargs


@dataclass
class Route:
    """One denoiser the session is installed on: the entry point it routes (`forward`, or `_compiled_call_impl` of
    a module compiled in place), the original there, the session's wrapper, and the forward's signature."""

    denoiser: Any
    entry: str = "forward"
    original: Any = None
    wrapper: Any = None
    signature: inspect.Signature | None = None


@dataclass
class Run:
    """State of one pipeline call."""

    table: StepTable
    scales: list[float | None]
    term_scales: list[list[float | None]] = field(default_factory=list)  # per term, s_i of every step
    step: int | None = None  # index into the scheduler's timesteps, located at the first denoiser call
    batch_size: int = 0  # samples in the pipeline's batch
    tokens: int | None = None  # leading generated tokens of a sequence with conditioning tokens (None: all)
    calls: int = 0  # denoiser calls seen in this step
    rows_before: int = 0  # session row count when this step began
    carried: Any = None  # what the adapter's call protocol carries from one call of the step to the next
    correction: tuple[torch.Tensor, torch.Tensor] | None = None  # CFG++: (reference, guided) for the scheduler step
    step_calls: list[DenoiserCall] = field(default_factory=list)  # PCG: the step's calls, replayed by the corrector
    correcting: int = 0  # PCG: the corrector iteration being evaluated (0: the pipeline's own step, the predictor)
    guided: torch.Tensor | None = None  # the last guided prediction of the B samples (PCG's corrector reads it)
    records: list[StepRecord] = field(default_factory=list)


def _method_signature(obj: Any, name: str) -> inspect.Signature:
    """The signature of the class's own method (instance wrappers by others may hide it behind *args)."""
    signature = inspect.signature(getattr(type(obj), name))
    return signature.replace(parameters=list(signature.parameters.values())[1:])


class Session:
    """A guidance method attached to one pipeline; use as a context manager (see `guidance.attach`)."""

    def __init__(self, pipe: Any, spec: Any, telemetry: bool = True) -> None:
        self.pipe = pipe
        self.guidance: Guidance = load(spec).model_copy(deep=True)
        self.adapter = adapter_for(pipe)
        self.adapter.check_guidance(self.guidance)
        self.telemetry = telemetry
        self.callback = StepEndCallback(self)
        self.current_run: Run | None = None
        self._rows = 0
        self._calls = 0
        self._runs: list[Run] = []
        self._patches: list[tuple[Any, str, bool, Any]] = []
        self._scope = RowScope()
        references = [self.guidance.reference, *(term.reference for term in self.guidance.terms)]
        found = ((id(r), perturbation_for(r, self.adapter, self._scope)) for r in references)
        self._perturbations: dict[int, Perturbation] = {key: p for key, p in found if p is not None}
        self._classifiers = {id(r): self._classifier(r) for r in references if r.reads_estimate}
        self._scheduler = pipe.scheduler
        self._correction: SamplerCorrection | None = None
        if self.guidance.rule.corrects_sampler:
            self._correction = correction_for(self._scheduler)
        # PCG's corrector noise where the pipeline passes no generator to its scheduler's step (guidance.run sets the
        # call's generator; None: torch's global generator)
        self.generator: Any = None
        self._corrector: Corrector | None = None
        if self.guidance.rule.predictor_corrector:
            check_predictor(self._scheduler)
            self._corrector = Corrector(self.guidance.rule)
        self._routes = [Route(denoiser) for denoiser in self.adapter.denoisers]
        self._active = self._routes[0]  # the route of the denoiser call being served
        self._caches = sorted({cache for d in self.adapter.denoisers for cache in caches_on(d)})
        check_spec(self._caches, self.guidance)
        attention = self.guidance.attention
        self._nag: NAGHook | None = None  # NAG in the conditional rows' attention (docs/CONVENTIONS.md §35)
        if attention is not None and attention.active:
            self.adapter.check_nag(self.guidance)
            self._nag = NAGHook(attention, self.adapter)
        # NAG's negative prompt embeddings where the family's calls do not carry them (set by guidance.run)
        self.nag_negative: dict[str, torch.Tensor] | None = None
        self._negative: dict[str, torch.Tensor] | None = None  # NAG's negative for the current pipeline call

    def _classifier(self, reference: Reference) -> Any:
        """The classifier of a reference that reads the conditional estimate (gfcg): a callable as given, a bundled
        one loaded onto the denoiser's device."""
        if self.adapter.condition_kind != "class":
            raise GuidanceError(f"Reference '{reference.name}' chooses a reference class, but the "
                                f"{type(self.pipe).__name__} denoiser is not conditioned on class labels. Use it on a "
                                "class-conditional pipeline (the digits pipeline, DiT); here use uncond or icg.")
        classifier = reference.classifier
        if callable(classifier):
            return classifier
        parameter = next(self.adapter.denoiser.parameters(), None)
        return bundled_classifier(classifier, None if parameter is None else parameter.device)

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
        try:
            # A module compiled in place (`module.compile()`) is called through `_compiled_call_impl`: routing that
            # keeps the plugin outside the compiled graph, as it is for `torch.compile(module)`. Every denoiser of
            # the pipeline (Wan 2.2's second expert too) is routed; a call is served with its own route.
            for route in self._routes:
                compiled = getattr(route.denoiser, "_compiled_call_impl", None) is not None
                route.entry = "_compiled_call_impl" if compiled else "forward"
                route.original = self._patch(route.denoiser, route.entry, functools.partial(self._forward, route))
                route.wrapper = getattr(route.denoiser, route.entry)
                route.signature = _method_signature(getattr(route.denoiser, "_orig_mod", route.denoiser), "forward")
            self._set_timesteps = self._patch(self._scheduler, "set_timesteps", self._on_set_timesteps)
            self._step = self._patch(self._scheduler, "step", self._on_step)
            self._step_signature = _method_signature(self._scheduler, "step")
            dispatches: dict[tuple[int, str], RowDispatch] = {}
            for perturbation in self._perturbations.values():
                perturbation.install(dispatches)
            if self._nag is not None:
                self._nag.install()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._nag is not None:
            self._nag.remove()
        for perturbation in reversed(list(self._perturbations.values())):
            perturbation.remove()
        for obj, name, had, old in reversed(self._patches):
            if had:
                setattr(obj, name, old)
            else:
                delattr(obj, name)
        self._patches = []
        self.current_run = None

    def _keep_forward_routed(self) -> None:
        """At the start of every pipeline call: if something replaced the denoiser's forward since the last call
        (model CPU offloading re-installs accelerate's hook after each call), route the new one through the session
        too. Exit still restores the forward that was there before attach."""
        for route in self._routes:
            current = getattr(route.denoiser, route.entry)
            if current is not route.wrapper:
                route.original = current
                setattr(route.denoiser, route.entry, route.wrapper)

    # ---------------------------------------------------------------- stats

    @property
    def rows(self) -> int:
        """Denoiser rows evaluated so far."""
        return self._rows

    @property
    def stats(self) -> dict[str, Any]:
        """denoiser_rows / denoiser_calls (all evaluated), runs, and per-step telemetry `steps`."""
        return {"denoiser_rows": self._rows, "denoiser_calls": self._calls, "runs": len(self._runs),
                "steps": [r.as_dict() for run in self._runs for r in run.records]}

    def record_latents(self, latents: torch.Tensor) -> None:
        """The latent RMS per sample at the end of the current pipeline step (from `callback`)."""
        run = self.current_run
        if run is None or not self.telemetry:
            return
        # the record of the pipeline's own step (PCG's corrector records for the next level come after it)
        record = next((r for r in reversed(run.records) if not r.corrector), None)
        if record is not None:
            record.latent_rms = per_sample_norm(latents).flatten() / latents[0].numel() ** 0.5

    # ---------------------------------------------------------------- scheduler side

    def _on_set_timesteps(self, *args: Any, **kwargs: Any) -> Any:
        self.adapter.check_pipeline_call(needs_pipeline_reference=not self.guidance.reference.from_condition)
        result = self._set_timesteps(*args, **kwargs)
        self._keep_forward_routed()
        table = step_table(self._scheduler, self.adapter.boundary())
        scales, term_scales = self.guidance.start_run(table)
        self.current_run = Run(table=table, scales=scales, term_scales=term_scales)
        check_run(self._caches, self.guidance, scales)
        self._runs.append(self.current_run)
        if self._correction is not None:
            self._correction.reset()
        return result

    def _on_step(self, *args: Any, **kwargs: Any) -> Any:
        run = self.current_run
        out = self._step(*args, **kwargs)
        if run is None or run.step is None:
            return out
        self.adapter.end_step(run)
        if run.records and run.records[-1].step == run.step:
            run.records[-1].denoiser_rows = self._rows - run.rows_before
        correcting = self._corrector is not None and run.step + 1 < len(run.table)
        if correcting or (run.correction is not None and self._correction is not None):
            bound = self._step_signature.bind(*args, **kwargs)
            bound.apply_defaults()
        if correcting:
            if float(bound.arguments.get("eta") or 0.0):
                raise GuidanceError("PCG's predictor is DDIM with eta = 0 (the corrector adds the noise); call the "
                                    "pipeline without eta.")
            rows, next_sample = run.batch_size, first_output(out)
            corrected = self._corrector.correct(self, run, bound.arguments["sample"][:rows], next_sample[:rows],
                                                bound.arguments.get("generator") or self.generator)
            out = with_first_output(out, self.adapter.scheduler_batch(corrected, next_sample.shape[0]))
        if run.correction is not None and self._correction is not None:
            reference, guided = run.correction
            rows = reference.shape[0]
            sample, next_sample = bound.arguments["sample"], first_output(out)
            corrected = self._correction.correct(self._scheduler, run.step, run.table, sample[:rows],
                                                 next_sample[:rows], reference, guided, bound.arguments)
            out = with_first_output(out, self.adapter.scheduler_batch(corrected, next_sample.shape[0]))
        run.step += 1
        run.calls, run.carried, run.correction, run.rows_before = 0, None, None, self._rows
        run.step_calls = []
        return out

    # ---------------------------------------------------------------- denoiser side

    def _forward(self, route: Route, *args: Any, **kwargs: Any) -> Any:
        if self.pipe.scheduler is not self._scheduler:
            raise GuidanceError("The pipeline's scheduler was replaced while guidance was attached. Set the "
                                "scheduler first, then attach (or call guidance.run).")
        self._active = route
        call = self.adapter.per_sample(DenoiserCall.bind(route.signature, args, kwargs, self.adapter.skip_keys,
                                                         self.adapter.batch_dims))
        run = self.current_run
        if run is None or (run.step is not None and run.step >= len(run.table)):
            return self.evaluate(call)
        self.adapter.check_call(call)
        if run.step is None:
            self._locate(call)
        if self._nag is not None:
            self._negative = self.adapter.nag_negative(call, self.nag_negative)
        run.calls += 1
        if run.calls > self.adapter.calls_per_step:
            raise GuidanceError(
                f"{type(self.pipe).__name__} called its denoiser {run.calls} times within one scheduler step, where "
                f"its family's pipelines call it {self.adapter.calls_per_step} time(s) (the CFG branches); guidance "
                "guides those calls only, so the others would go unguided. This pipeline (or an option of it, such "
                "as context windows or per-view calls) is not supported: use its own guidance, or the family's "
                "plain pipeline with guidance.")
        if self._corrector is not None:
            run.step_calls.append(call)
        return self.adapter.guide_call(self, call)

    def route_at(self, timestep: float) -> None:
        """Serve the next evaluations with the denoiser the pipeline runs at scheduler timestep `timestep` (the second
        expert below the boundary)."""
        boundary = self.current_run.table.boundary
        second = boundary is not None and timestep < boundary and len(self._routes) > 1
        self._active = self._routes[1 if second else 0]

    def _locate(self, call: DenoiserCall) -> None:
        """First denoiser call of a run: find the step (img2img starts late) and reset batch-sized state."""
        run = self.current_run
        t = self.adapter.scheduler_timestep(self.adapter.call_time(call.get(self.adapter.timestep_field)))
        run.step = min(range(len(run.table)), key=lambda k: abs(run.table.timesteps[k] - t))
        run.batch_size, run.rows_before = self.adapter.batch_size(call), self._rows
        run.tokens = self.adapter.generated_tokens(call)
        self.guidance.policy.reset(run.batch_size, run.table)

    # ---------------------------------------------------------------- services of the adapters' call protocols

    def plan(self) -> tuple[float | None, list[int]]:
        """The current step's scale (None: conditional only) and the samples whose reference rows run."""
        run = self.current_run
        w = None if self._predicting() else run.scales[run.step]
        return w, (self.guidance.policy.reference_samples(run.step) if w is not None else [])

    def _predicting(self) -> bool:
        """Whether the call being served is PCG's predictor (the pipeline's own step: conditional only)."""
        return self._corrector is not None and not self.current_run.correcting

    def outputs_zero(self, w: float | None) -> bool:
        """Whether the current step outputs 0 without any evaluation (CFG-Zero*'s zero-init)."""
        return w is not None and self.guidance.rule.outputs_zero(self.current_run.step)

    def evaluate_step(self, groups: list[Group], call: DenoiserCall, cond_rows: slice
                      ) -> tuple[Any, list[torch.Tensor], list[tuple[Term, float, torch.Tensor]]]:
        """evaluate_groups over `groups` and one group per term active at this step (s_i ≠ 0: copies of the
        conditional rows `cond_rows` of `call`). Returns the denoiser call's output, the outputs of `groups`, and
        the active terms with their s_i and outputs."""
        run = self.current_run
        terms = [(term, scales[run.step]) for term, scales in zip(self.guidance.terms, run.term_scales, strict=True)
                 if scales[run.step] is not None and not self._predicting()]
        cond = call.take(cond_rows) if terms else call
        given = len(groups)
        groups = [*groups, *(Group(cond, term.reference) for term, _ in terms)]
        if any(g.reference is not None and g.reference.reads_estimate for g in groups):
            out, outputs = self._evaluate_after_estimate(groups, call, cond_rows)
        else:
            out, outputs = self.evaluate_groups(groups)
        return out, outputs[:given], [(term, s, output) for (term, s), output in zip(terms, outputs[given:],
                                                                                     strict=True)]

    def _evaluate_after_estimate(self, groups: list[Group], call: DenoiserCall, cond_rows: slice
                                 ) -> tuple[Any, list[torch.Tensor]]:
        """evaluate_groups in two calls: first the groups whose rows do not depend on the step's conditional estimate
        (the first holds the conditional rows: alone, or within the pipeline's whole batch), then — once the
        references that read it (gfcg) have seen x̂0_c and the class labels — the others. Outputs in `groups`' order."""
        late = [g.reference is not None and g.reference.reads_estimate for g in groups]
        out, early = self.evaluate_groups([g for g, is_late in zip(groups, late, strict=True) if not is_late])
        first = next(g for g, is_late in zip(groups, late, strict=True) if not is_late)
        cond = early[0][cond_rows] if first.call is call else early[0]
        run, x = self.current_run, call.sample[cond_rows]
        prediction = self.adapter.prediction(cond, x)
        x0 = to_x0(prediction, self.adapter.latents(x, prediction), run.table.a[run.step], run.table.s[run.step],
                   run.table.prediction_type)
        labels = call.get(self.adapter.class_field)[cond_rows]
        readers = [g for g, is_late in zip(groups, late, strict=True) if is_late]
        for reference in {id(g.reference): g.reference for g in readers}.values():
            reference.observe(x0, labels, self._classifiers[id(reference)])
        _, rest = self.evaluate_groups(readers)
        early_outputs, late_outputs = iter(early), iter(rest)
        return out, [next(late_outputs) if is_late else next(early_outputs) for is_late in late]

    def evaluate(self, call: DenoiserCall) -> Any:
        """Run the original denoiser forward on `call` as it is."""
        self._rows += call.batch
        self._calls += 1
        return call.run(self._active.original)

    def evaluate_groups(self, groups: list[Group]) -> tuple[Any, list[torch.Tensor]]:
        """Evaluate the groups of a step: those on the denoiser in ONE call — each reference prepares its own rows and
        its perturbation touches only them — and those whose reference brings its own network (autoguidance) in a
        call of that network; for a family that does not join groups (`Adapter.joins_groups`), each group in a call
        of its own. Returns the denoiser call's output (the first group's) and each group's output rows."""
        if len(groups) > 1 and not self.adapter.joins_groups:  # one call per group, as the pipeline runs its prompts
            evaluated = [self.evaluate_groups([group]) for group in groups]
            return evaluated[0][0], [outputs[0] for _, outputs in evaluated]
        networks = [self._network_of(g) for g in groups]
        own = [g for g, network in zip(groups, networks, strict=True) if network is None]
        out, outputs = (self._evaluate_jointly(own) if own else (None, iter(())))
        results = []
        for group, network in zip(groups, networks, strict=True):
            if network is None:
                results.append(next(outputs))
                continue
            self._rows += group.call.batch
            self._calls += 1
            network_out = group.call.run(network)
            out = network_out if out is None else out
            results.append(first_output(network_out))
        return out, results

    def _evaluate_jointly(self, own: list[Group]) -> tuple[Any, Any]:
        """One denoiser call on the rows of `own`; its output and an iterator over each group's output rows."""
        joined = DenoiserCall.concat([g.call for g in own]) if len(own) > 1 else own[0].call
        bounds, start = [], 0
        for group in own:
            bounds.append(slice(start, start + group.call.batch))
            start += group.call.batch
        run = self.current_run
        t = run.table.timesteps[run.step] / run.table.num_train_timesteps
        active, conditional = [], None
        for group, rows in zip(own, bounds, strict=True):
            part = group.conditional_rows()
            if part is not None:
                conditional = slice(rows.start + part.start, rows.start + part.stop)
            if group.reference is not None:
                group.reference.prepare(RowView(joined, rows, self.adapter, self.pipe))
                perturbation = self._perturbations.get(id(group.reference))
                if perturbation is not None:
                    perturbation.rows, perturbation.t = rows, t
                    perturbation.latent_size = tuple(joined.sample.shape[-2:])
                    perturbation.start_call()
                    active.append(perturbation)
        self._rows += joined.batch
        self._calls += 1
        try:
            with self._scope.within(0, joined.batch):
                if self._nag is not None and conditional is not None:
                    out = self._nag.run(joined, conditional, self._negative, self._active.original)
                else:
                    out = joined.run(self._active.original)
        finally:
            for perturbation in active:
                perturbation.rows = None
        first = first_output(out)
        return out, iter([first[rows] for rows in bounds])

    def _network_of(self, group: Group) -> Any:
        perturbation = None if group.reference is None else self._perturbations.get(id(group.reference))
        return None if perturbation is None else perturbation.network

    def reference_call(self, call: DenoiserCall, rows: slice, samples: list[int]) -> DenoiserCall:
        """The rows `rows` of `call` restricted to `samples` (indices into the pipeline's batch)."""
        if len(samples) == self.current_run.batch_size:
            return call.take(rows)
        return call.take(torch.tensor([rows.start + b for b in samples]).to(call.sample.device, non_blocking=True))

    def output(self, call: DenoiserCall, tensor: torch.Tensor) -> Any:
        """A denoiser output holding `tensor`, in the form the pipeline asked for (return_dict or tuple)."""
        if call.arguments.get("return_dict", True) is False:
            return (tensor,)
        return self.adapter.output_class(sample=tensor)

    def zero(self, sample: torch.Tensor) -> torch.Tensor:
        """CFG-Zero*'s zero-init step for the B samples of `sample`: a zero prediction, nothing evaluated."""
        zero = self.adapter.zero_output(sample)
        self._record(self.current_run.scales[self.current_run.step], GuidedStep(zero, None, (), 0))
        return zero

    def guide(self, w: float | None, x: torch.Tensor, cond: torch.Tensor, reference: torch.Tensor | None,
              samples: list[int], terms: list[tuple[Term, float, torch.Tensor]] = ()) -> torch.Tensor:
        """The guided output of the B samples (all output channels) from the raw outputs of the branches; `terms`:
        the active terms with their s_i and their reference's raw output. Only the generated tokens are guided
        (`Adapter.generated_tokens`); conditioning tokens pass through from `cond`."""
        run = self.current_run
        k = run.step
        point = StepPoint(index=k, batch_size=run.batch_size, a=run.table.a[k], s=run.table.s[k],
                          prediction_type=run.table.prediction_type)
        tokens = run.tokens

        def generated(out: torch.Tensor) -> torch.Tensor:
            return out if tokens is None else out[:, :tokens]

        def prediction(out: torch.Tensor) -> torch.Tensor:
            return self.adapter.prediction(generated(out), x)

        cond_prediction = prediction(cond)
        term_inputs = [TermInput(term, _per_sample(s, term.reference, 0.0), prediction(output))
                       for term, s, output in terms]
        sample_w = None if w is None else _per_sample(w, self.guidance.reference, 1.0)
        step = guided_step(self.guidance, point, sample_w, self.adapter.latents(x, cond_prediction), cond_prediction,
                           None if reference is None else prediction(reference), samples, self.telemetry,
                           term_inputs)
        if self._correction is not None and step.reference is not None:
            run.correction = (self.adapter.scheduler_prediction(step.reference),
                              self.adapter.scheduler_prediction(step.prediction))
        self._record(w, step)
        run.guided = step.prediction
        if isinstance(sample_w, torch.Tensor) and self.telemetry:
            run.records[-1].sample_w = sample_w
        guided = self.adapter.with_prediction(generated(cond), step.prediction)
        return guided if tokens is None else torch.cat([guided, cond[:, tokens:]], dim=1)

    def _record(self, w: float | None, step: GuidedStep) -> None:
        run = self.current_run
        k = run.step
        run.records.append(StepRecord(
            run=len(self._runs) - 1, step=k, t=run.table.timesteps[k], sigma=run.table.sigma[k],
            w=1.0 if w is None else w, branches=step.branches, reference_rows=step.reference_rows,
            samples=run.batch_size,
            cosine=step.cosine, delta_norm=step.delta_norm, terms=step.terms, corrector=run.correcting))
