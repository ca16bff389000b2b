"""The doubled-batch call protocol (SD 1.x/2.x, SDXL, SD3, PixArt, DiT, class-conditional UNets): the pipeline
calls the denoiser once per step on its CFG batch — [uncond; cond], or [cond; uncond] with `cond_first` — and
combines the halves itself with `u + s·(c − u)`.

The protocol evaluates only the rows the step needs: the conditional rows, plus the reference rows of the guided
samples (the pipeline's own unconditional rows for `uncond`; copies of the conditional rows, changed by the
reference, for icg/tsg), or the conditional rows alone. It returns the guided prediction g in BOTH halves, so the
pipeline's own line yields exactly g.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from guidance.errors import GuidanceError

from ..call import DenoiserCall, Group, with_first_output
from .base import Adapter

if TYPE_CHECKING:
    from ..session import Session


class DoubledBatchAdapter(Adapter):
    """A family whose pipeline doubles its batch for CFG."""

    cond_first: ClassVar[bool] = False

    def check_doubled(self, call: DenoiserCall) -> None:
        """Raise unless the call is the pipeline's doubled CFG batch."""
        flag = getattr(self.pipe, "do_classifier_free_guidance", None)
        if flag is False or call.batch % 2:
            raise GuidanceError(
                f"The {type(self.pipe).__name__} call is not running classifier-free guidance, so there is no "
                "reference batch to guide with. With guidance.attach pass guidance_scale > 1 (any value: the "
                "guidance spec sets the strength), or use guidance.run, which does it for you."
            )

    def batch_size(self, call: DenoiserCall) -> int:
        self.check_doubled(call)
        return call.batch // 2

    def cond_rows(self, batch: int) -> slice:
        return slice(0, batch) if self.cond_first else slice(batch, 2 * batch)

    def reference_rows(self, batch: int) -> slice:
        return slice(batch, 2 * batch) if self.cond_first else slice(0, batch)

    def nag_negative(self, call: DenoiserCall, given: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The negative prompt's text fields: the pipeline's own unconditional rows of this call."""
        rows = self.reference_rows(call.batch // 2)
        return {"/".join(path): call.get(path)[rows] for path in self.nag_text_fields}

    def guide_call(self, session: Session, call: DenoiserCall) -> Any:
        batch = session.current_run.batch_size
        cond_rows, reference_rows = self.cond_rows(batch), self.reference_rows(batch)
        w, samples = session.plan()
        x = call.sample[cond_rows]
        if session.outputs_zero(w):
            zero = session.zero(x)
            return session.output(call, torch.cat([zero, zero]))
        reference = session.guidance.reference
        own_batch = w is not None and len(samples) == batch and not reference.from_condition
        if own_batch:  # the pipeline's own [uncond; cond] rows, in its order
            groups = [Group(call, conditional=cond_rows)]
        else:
            groups = [Group(call.take(cond_rows))]
            if samples:
                source = cond_rows if reference.from_condition else reference_rows
                groups.append(Group(session.reference_call(call, source, samples), reference))
        out, outputs, terms = session.evaluate_step(groups, call, cond_rows)
        if own_batch:
            cond, reference_prediction = outputs[0][cond_rows], outputs[0][reference_rows]
        else:
            cond, reference_prediction = outputs[0], outputs[1] if samples else None
        guided = self.after_combination(cond, session.guide(w, x, cond, reference_prediction, samples, terms))
        return with_first_output(out, torch.cat([guided, guided]))
