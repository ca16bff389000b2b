"""References: what the conditional prediction is contrasted against."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

import torch
from pydantic import Field, PrivateAttr

from ..strategy import Strategy


class ReferenceRows(Protocol):
    """The reference rows of one denoiser call, as a reference strategy may change them.

    `kind` is "class" (class labels), "text" (prompt embeddings) or "none" (unconditional model).
    """

    kind: str
    num_classes: int | None

    def __len__(self) -> int: ...

    def class_labels(self) -> torch.Tensor: ...

    def set_class_labels(self, labels: torch.Tensor) -> None: ...

    def embeddings(self) -> dict[str, torch.Tensor]: ...

    def set_embeddings(self, embeddings: dict[str, torch.Tensor]) -> None: ...

    def prompt_bank(self, prompts: list[str] | None = None) -> dict[str, torch.Tensor]: ...


class Reference(Strategy):
    """Decides the inputs of the reference rows.

    `from_condition`: the reference rows are copies of the conditional rows (same x_t, t and condition),
    which `prepare` then changes; otherwise they are the pipeline's own unconditional/negative rows.
    `perturbs_time_embedding`: the session hooks the denoiser's time embedding and adds
    `time_noise(...)` to the reference rows' embedding.
    `reads_estimate`: the reference's rows depend on the step's conditional estimate x̂0_c, so the session evaluates
    the conditional rows first and calls `observe` before preparing the reference rows (gfcg).
    """

    from_condition: ClassVar[bool] = False
    perturbs_time_embedding: ClassVar[bool] = False
    reads_estimate: ClassVar[bool] = False
    default_term_scale: ClassVar[float | None] = None  # s when a term gives none (the paper's); None: required

    def reset(self) -> None:
        """Forget per-run state (called at the start of every pipeline call)."""

    def prepare(self, rows: ReferenceRows) -> None:
        """Change the reference rows' conditions in place (called at every step)."""

    def time_noise(self, shape: torch.Size, t: float) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, x0: torch.Tensor, labels: torch.Tensor, classifier: Callable[[torch.Tensor], torch.Tensor]
                ) -> None:
        """See the step's conditional estimate x̂0_c and class labels of all B samples (`reads_estimate` only)."""

    def scale_factors(self) -> torch.Tensor | None:
        """Per-sample factors (B,) on the step's w − 1 (a term's s) set by `observe`; None: the scale as scheduled."""
        return None


class SeededReference(Reference):
    """A reference that draws random numbers from its own generator, re-seeded at every pipeline call."""

    seed: int = Field(0, ge=0)

    _generator: torch.Generator | None = PrivateAttr(None)

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)


class PerturbedReference(Reference):
    """A degraded copy of the conditional prediction: the conditional rows' inputs through a perturbed network
    (docs/CONVENTIONS.md §21). `perturbation` names what the integration does to the network for these rows;
    `layer_kind` says what `layers` index: "attention" (pag_applied_layers ids) or "blocks" (main block list)."""

    from_condition: ClassVar[bool] = True
    perturbation: ClassVar[str]
    layer_kind: ClassVar[str] = "attention"
