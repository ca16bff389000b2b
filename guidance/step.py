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

from .rules.base import RuleStep
from .spaces import from_x0, per_sample_cosine, per_sample_norm, to_x0
from .spec import Guidance


@dataclass(frozen=True)
class StepPoint:
    """Where a step is: its index in the run, the pipeline batch's sample count, and x_t = a·x0 + s·n."""

    index: int
    batch_size: int
    a: float
    s: float
    prediction_type: str


@dataclass(frozen=True)
class GuidedStep:
    """The result of one step.

    prediction: the guided prediction of every sample (D_c where a sample is not guided);
    reference: every sample's reference prediction, with the guided prediction where none was evaluated, or None
    when the step is conditional only (CFG++ renoises with it);
    branches: ("cond",), ("cond", "reference") or ("cond", "estimate") where LinearAG estimated the reference;
    reference_rows: the reference rows that were evaluated;
    cosine, delta_norm: cos(x̂0_c, x̂0_r) and ‖x̂0_c − x̂0_r‖ per guided sample (only with telemetry).
    """

    prediction: torch.Tensor
    reference: torch.Tensor | None
    branches: tuple[str, ...]
    reference_rows: int
    cosine: torch.Tensor | None = None
    delta_norm: torch.Tensor | None = None


def rescale_guided(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al., arXiv 2305.08891, Eq. 15–16): match the std of the conditional output."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def guided_step(spec: Guidance, point: StepPoint, w: float | None, x: torch.Tensor, cond: torch.Tensor,
                reference: torch.Tensor | None, samples: Sequence[int], telemetry: bool = True) -> GuidedStep:
    """The guided prediction of one step.

    x: the model input x_t of all B samples; cond: D_c of all B samples; reference: D_r of the samples listed in
    `samples` (in that order), or None; w: the step's scale, None for a conditional-only step.
    """
    index, policy = point.index, spec.policy
    samples = list(samples)
    estimated = w is not None and reference is None
    if estimated:
        reference = policy.estimate(index, cond)
        samples = list(range(point.batch_size)) if reference is not None else []
    if w is None or reference is None or not samples:
        policy.observe(index, [], cond, None, None)
        return GuidedStep(cond, None, ("cond",), 0)
    every = len(samples) == point.batch_size
    rows: slice | torch.Tensor = slice(None) if every else torch.tensor(samples).to(cond.device, non_blocking=True)
    cond_guided, x_guided = cond[rows], x[rows]
    reference = reference.to(cond_guided.dtype)
    a, s, kind = point.a, point.s, point.prediction_type
    rule = spec.rule
    need_x0 = rule.space == "x0" or telemetry or policy.uses_cosine
    x0_cond = to_x0(cond_guided, x_guided, a, s, kind) if need_x0 else None
    x0_reference = to_x0(reference, x_guided, a, s, kind) if need_x0 else None
    rule_step = RuleStep(index=index, samples=rows, batch_size=point.batch_size)
    if rule.space == "x0":
        combined = from_x0(rule.combine(x0_cond, x0_reference, w, rule_step), x_guided, a, s, kind)
        combined = combined.to(cond_guided.dtype)
    else:
        combined = rule.combine(cond_guided, reference, w, rule_step)
    if spec.rescale:
        combined = rescale_guided(combined, cond_guided, spec.rescale)
    cosine = per_sample_cosine(x0_cond, x0_reference) if need_x0 else None
    prediction = combined if every else cond.index_copy(0, rows, combined)
    policy.observe(index, samples, cond, reference, cosine)
    return GuidedStep(
        prediction=prediction,
        reference=reference if every else prediction.index_copy(0, rows, reference),
        branches=("cond", "estimate" if estimated else "reference"),
        reference_rows=0 if estimated else len(samples),
        cosine=cosine if telemetry else None,
        delta_norm=per_sample_norm(x0_cond - x0_reference).flatten() if telemetry else None)
