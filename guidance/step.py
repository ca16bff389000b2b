"""One guided step as a pure function: the branches' predictions, the step's scale and noise coefficients in; the
guided prediction and the step's telemetry out. No pipeline, session or adapter is involved: the session hands
over the prediction channels of the B samples of the pipeline's batch, whatever rows and calls they came from.

The order of work (docs/CONVENTIONS.md gives each choice):
1. A guided step whose reference rows were not evaluated asks the policy for an estimate (LinearAG, §18).
2. A step without a scale (w = 1, §4) or without a reference returns D_c; the policy sees D_c.
3. The rule combines D_c and D_r of the evaluated samples in its space (x̂0 for APG; the scheduler's own a and s,
   §8), the result goes back to the prediction type; `rescale` matches the std of D_c (§7).
4. Samples whose reference was not evaluated (AG has switched them off, §5, §16) keep D_c.
5. The policy observes D_c, D_r and cos(x̂0_c, x̂0_r) (AG's switch).
The strategies keep their per-run state (APG's momentum, AG's switches) and are reset by the session per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .rules.base import Rule, RuleStep
from .spaces import from_x0, per_sample_cosine, per_sample_norm, to_x0
from .spec import Guidance, Term


@dataclass(frozen=True)
class StepPoint:
    """Where a step is: its index in the run, the pipeline batch's sample count, and x_t = a·x0 + s·n."""

    index: int
    batch_size: int
    a: float
    s: float
    prediction_type: str


Scale = float | torch.Tensor  # a step's w (or a term's s): one for all samples, or per sample of the batch (B,)


@dataclass(frozen=True)
class TermInput:
    """An active term at a step: its spec, its s_i (per sample: (B,)) and its reference prediction D_r of all B
    samples."""

    term: Term
    s: Scale
    prediction: torch.Tensor


@dataclass(frozen=True)
class TermRecord:
    """A term's telemetry at a step: its reference's name, s_i (per sample where its reference sets it), and per
    sample cos(x̂0_c, x̂0_r), ‖x̂0_c − x̂0_r‖."""

    name: str
    s: Scale
    cosine: torch.Tensor | None = None
    delta_norm: torch.Tensor | None = None


@dataclass(frozen=True)
class GuidedStep:
    """The result of one step.

    prediction: the guided prediction of every sample (D_c where nothing guides a sample);
    reference: every sample's main reference prediction, with the guided prediction where none was evaluated, or
    None when the main term is conditional only (CFG++ renoises with it);
    branches: ("cond",), ("cond", "reference") or ("cond", "estimate") where LinearAG estimated the reference;
    reference_rows: the main reference's rows that were evaluated;
    cosine, delta_norm: cos(x̂0_c, x̂0_r) and ‖x̂0_c − x̂0_r‖ per guided sample (only with telemetry);
    terms: the active terms' telemetry.
    """

    prediction: torch.Tensor
    reference: torch.Tensor | None
    branches: tuple[str, ...]
    reference_rows: int
    cosine: torch.Tensor | None = None
    delta_norm: torch.Tensor | None = None
    terms: tuple[TermRecord, ...] = ()


def rescale_guided(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al., arXiv 2305.08891, Eq. 15–16): match the std of the conditional output."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def _per_sample(w: Scale, samples: slice | torch.Tensor, like: torch.Tensor) -> Scale:
    """w for the samples a combine covers: a float as it is; per-sample scales (B,) cut to `samples` and shaped to
    broadcast over each sample of `like`, in its dtype."""
    if not isinstance(w, torch.Tensor):
        return w
    return w.to(like.device, like.dtype)[samples].reshape(-1, *([1] * (like.ndim - 1)))


def _combine(rule: Rule, w: Scale, rule_step: RuleStep, point: StepPoint, x: torch.Tensor, cond: torch.Tensor,
             reference: torch.Tensor, need_x0: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """rule(c, r, w) in the rule's space, returned in the prediction type; and x̂0_c, x̂0_r when needed."""
    a, s, kind = point.a, point.s, point.prediction_type
    x0_cond = to_x0(cond, x, a, s, kind) if need_x0 or rule.space == "x0" else None
    x0_reference = to_x0(reference, x, a, s, kind) if need_x0 or rule.space == "x0" else None
    if rule.space == "x0":
        w = _per_sample(w, rule_step.samples, x0_cond)
        combined = from_x0(rule.combine(x0_cond, x0_reference, w, rule_step), x, a, s, kind).to(cond.dtype)
    else:
        combined = rule.combine(cond, reference, _per_sample(w, rule_step.samples, cond), rule_step)
    return combined, x0_cond, x0_reference


def _contribution(term: TermInput, point: StepPoint, x: torch.Tensor, cond: torch.Tensor,
                  telemetry: bool) -> tuple[torch.Tensor, TermRecord]:
    """rule_k(c, r_k, 1 + s_k) − c in the prediction type, for all samples, and the term's telemetry."""
    rule = term.term.rule
    rule_step = RuleStep(index=point.index, samples=slice(None), batch_size=point.batch_size,
                         scale=1.0 + term.term.scale)
    reference = term.prediction.to(cond.dtype)
    combined, x0_cond, x0_reference = _combine(rule, 1.0 + term.s, rule_step, point, x, cond, reference, telemetry)
    if rule.space == "x0":  # the difference of two conversions: the affine offset of from_x0 cancels exactly
        base = from_x0(x0_cond, x, point.a, point.s, point.prediction_type).to(cond.dtype)
        contribution = combined - base
    else:
        contribution = combined - cond
    record = TermRecord(term.term.reference.name, term.s)
    if telemetry:
        record = TermRecord(record.name, record.s, per_sample_cosine(x0_cond, x0_reference),
                            per_sample_norm(x0_cond - x0_reference).flatten())
    return contribution, record


def guided_step(spec: Guidance, point: StepPoint, w: Scale | None, x: torch.Tensor, cond: torch.Tensor,
                reference: torch.Tensor | None, samples: Sequence[int], telemetry: bool = True,
                terms: Sequence[TermInput] = ()) -> GuidedStep:
    """The guided prediction of one step: main(c, r0, w) + Σ_k [rule_k(c, r_k, 1 + s_k) − c] (§20).

    x: the model input x_t of all B samples; cond: D_c of all B samples; reference: D_r of the samples listed in
    `samples` (in that order), or None; w: the step's scale (or each of the B samples' scale, (B,)), None for a
    conditional-only main term; terms: the active terms, each with its reference's prediction of all B samples.
    """
    index, policy = point.index, spec.policy
    samples = list(samples)
    estimated = w is not None and reference is None
    if estimated:
        reference = policy.estimate(index, cond)
        samples = list(range(point.batch_size)) if reference is not None else []
    guided_main = w is not None and reference is not None and bool(samples)
    every = len(samples) == point.batch_size
    rows: slice | torch.Tensor = slice(None) if every else torch.tensor(samples).to(cond.device, non_blocking=True)
    cosine = delta_norm = None
    prediction, main_reference = cond, None
    if guided_main:
        reference = reference.to(cond.dtype)
        need_x0 = telemetry or policy.uses_cosine
        rule_step = RuleStep(index=index, samples=rows, batch_size=point.batch_size, scale=spec.scale)
        combined, x0_cond, x0_reference = _combine(spec.rule, w, rule_step, point, x[rows], cond[rows], reference,
                                                   need_x0)
        if need_x0:
            cosine = per_sample_cosine(x0_cond, x0_reference)
            delta_norm = per_sample_norm(x0_cond - x0_reference).flatten() if telemetry else None
        prediction = combined if every else cond.index_copy(0, rows, combined)
        policy.observe(index, samples, cond, reference, cosine)
    else:
        policy.observe(index, [], cond, None, None)
    records = []
    for term in terms:
        contribution, record = _contribution(term, point, x, cond, telemetry)
        prediction = prediction + contribution
        records.append(record)
    if spec.rescale and (terms or (guided_main and every)):
        prediction = rescale_guided(prediction, cond, spec.rescale)
    elif spec.rescale and guided_main:  # only the guided samples
        prediction = prediction.index_copy(0, rows, rescale_guided(prediction[rows], cond[rows], spec.rescale))
    if guided_main:
        main_reference = reference if every else prediction.index_copy(0, rows, reference)
    return GuidedStep(
        prediction=prediction, reference=main_reference,
        branches=("cond", "estimate" if estimated else "reference") if guided_main else ("cond",),
        reference_rows=len(samples) if guided_main and not estimated else 0,
        cosine=cosine if telemetry else None, delta_norm=delta_norm, terms=tuple(records))
