"""The separate-calls call protocol (Flux's true CFG): the pipeline calls the denoiser twice per step, first with
the prompt, then with the negative prompt, and combines them with `neg + s·(cond − neg)`.

The first call evaluates the conditional rows (and, for icg/tsg and the terms, the reference rows built from them,
each group in a denoiser call of its own: no call is larger than the pipeline's, so peak memory stays its own);
for `uncond` the guided prediction needs the second call's output, so the first call's output tensor is kept and,
when the negative call has run, overwritten IN PLACE with the guided prediction g: the pipeline holds that very
tensor as its conditional prediction, and the second call returns g too, so `g + s·(g − g)` is exactly g. When the
step needs no negative rows (conditional only, icg/tsg, CFG-Zero*'s zero-init) the second call is not evaluated:
it returns the step's output again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from guidance.errors import GuidanceError

from ..call import DenoiserCall, Group, first_output, with_first_output
from .base import Adapter

if TYPE_CHECKING:
    from guidance.spec import Guidance

    from ..session import Run, Session


def conditional_norm(cond: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
    """`guided` rescaled to the norm of `cond` along the last dim (Qwen-Image, Lumina 2 after their combination)."""
    return guided * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(guided, dim=-1, keepdim=True))


@dataclass
class AwaitingNegative:
    """The first call of an `uncond` step, waiting for the negative call: x_t, its output tensor, the guided
    samples, the step's scale and the active terms' outputs."""

    x: torch.Tensor
    cond: torch.Tensor
    samples: list[int]
    w: float | None
    terms: list[tuple[Any, float, torch.Tensor]]


class SeparateCallsAdapter(Adapter):
    """A family whose pipeline runs the prompt and the negative prompt as separate denoiser calls."""

    calls_per_step = 2
    joins_groups = False  # the pipeline runs B rows per call, so does guidance (icg, tsg, terms: calls of their own)

    @property
    def negative_call(self) -> bool:
        """Whether the pipeline has a negative-prompt call at all (a guidance-distilled one has none)."""
        return True

    def check_guidance(self, guidance: Guidance) -> None:
        conditional_only = guidance.scale == 1.0 and not guidance.rule.corrects_sampler  # docs/CONVENTIONS.md §4
        if not self.negative_call and not guidance.reference.from_condition and not conditional_only:
            raise GuidanceError(
                f"{type(self.pipe).__name__} is guidance-distilled: it makes no negative-prompt call, so reference "
                f"`{guidance.reference.name}` has nothing to contrast with. Use a reference built from the "
                "conditional call (slg, stg, tsg, icg or autoguidance) as the main reference, or scale: 1 with such "
                "references as terms.")

    def batch_size(self, call: DenoiserCall) -> int:
        return call.batch

    def guide_call(self, session: Session, call: DenoiserCall) -> Any:
        run = session.current_run
        if run.calls == 2:
            return self._negative_call(session, call)
        w, samples = session.plan()
        if session.outputs_zero(w):
            zero = session.zero(call.sample)
            run.carried = self.negative_at_zero(zero)
            return session.output(call, zero)
        reference = session.guidance.reference
        everyone = slice(0, run.batch_size)
        groups = [Group(call)]
        if samples and reference.from_condition:
            groups.append(Group(session.reference_call(call, everyone, samples), reference))
        out, outputs, term_outputs = session.evaluate_step(groups, call, everyone)
        cond = outputs[0]
        if samples and not reference.from_condition:
            run.carried = AwaitingNegative(call.sample, cond, samples, w, term_outputs)
            return with_first_output(out, cond)
        reference_prediction = outputs[1] if samples else None
        guided = session.guide(w, call.sample, cond, reference_prediction, samples, term_outputs)
        run.carried = self.after_combination(cond, guided)
        return with_first_output(out, run.carried)

    def _negative_call(self, session: Session, call: DenoiserCall) -> Any:
        run = session.current_run
        awaiting = run.carried
        if not isinstance(awaiting, AwaitingNegative):  # the step's output is known: nothing to evaluate
            return session.output(call, awaiting)
        out = session.evaluate(session.reference_call(call, slice(0, run.batch_size), awaiting.samples))
        guided = session.guide(awaiting.w, awaiting.x, awaiting.cond, first_output(out), awaiting.samples,
                               awaiting.terms)
        # the pipeline's conditional prediction becomes g (see the module docstring)
        awaiting.cond.copy_(self.after_combination(awaiting.cond, guided))
        run.carried = awaiting.cond
        return with_first_output(out, awaiting.cond)

    @property
    def rescales_to_conditional(self) -> bool:
        """Whether the pipeline rescales its combined prediction to the conditional one's norm (`conditional_norm`)."""
        return False

    def negative_at_zero(self, zero: torch.Tensor) -> torch.Tensor:
        """What the negative call returns at a zero-output step (CFG-Zero*'s zero-init), where the conditional call
        returned `zero`, such that the pipeline's own combination yields 0. A pipeline that rescales comb =
        neg + s·(cond − neg) by ‖cond‖/‖comb‖ gets neg = 1: comb ≠ 0 and the result is exactly 0 (not 0/0)."""
        return torch.ones_like(zero) if self.rescales_to_conditional else zero

    def after_combination(self, cond: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        """What the pipeline does to its combined prediction after `neg + s·(cond − neg)`, applied to g here (the
        pipeline then sees g in both outputs, so its own step would be the identity)."""
        return conditional_norm(cond, guided) if self.rescales_to_conditional else guided

    def end_step(self, run: Run) -> None:
        if isinstance(run.carried, AwaitingNegative):
            raise GuidanceError(
                f"{type(self.pipe).__name__} ran no negative-prompt call, so reference `uncond` has nothing to "
                "contrast with. Pass a negative prompt and true_cfg_scale > 1 (guidance.run does both), or use "
                "reference icg or tsg."
            )
