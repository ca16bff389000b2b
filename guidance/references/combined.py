"""`combined`: several references at once, e.g. ICG + TSG — the reference rows see a random condition AND a
perturbed time embedding.

Sadat, Kansy, Hilliges, Weber, ICLR 2025 (arXiv 2407.02687), §6 ("ICG and TSG can be combined", DiT-XL/2 FID
5.24): D̂ = D(x_t, t̃_emb, ŷ) + w·(D(x_t, t_emb, y) − D(x_t, t̃_emb, ŷ)). Write `reference: [icg, tsg]`. Only
references built from the conditional rows (icg, tsg) combine; each keeps its own parameters and generator.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import field_validator

from .base import Reference, ReferenceRows


class Combined(Reference):
    """Apply every listed reference to the same reference rows."""

    name = "combined"
    from_condition = True
    paper = "Sadat, Kansy, Hilliges & Weber, ICLR 2025 (arXiv 2407.02687)"
    summary = "several references on the same rows, e.g. [icg, tsg]"

    of: list[Reference]

    @field_validator("of", mode="before")
    @classmethod
    def _build(cls, value: Any) -> Any:
        from . import REFERENCES

        if not isinstance(value, list) or len(value) < 2:
            raise ValueError("list at least two references, e.g. [icg, tsg]")
        members = [REFERENCES.build(v) for v in value]
        for member in members:
            if member.reads_estimate:
                raise ValueError(f"'{member.name}' cannot be combined: it chooses its rows' condition itself from "
                                 "the conditional estimate; use it alone or as a term")
            if not member.from_condition or isinstance(member, Combined):
                raise ValueError(f"'{member.name}' cannot be combined: only icg and tsg build their reference rows "
                                 "from the conditional rows")
        if sum(m.perturbs_time_embedding for m in members) > 1:
            raise ValueError("at most one time-embedding perturbation (tsg) per combination")
        return members

    @property
    def perturbs_time_embedding(self) -> bool:  # type: ignore[override]
        return any(m.perturbs_time_embedding for m in self.of)

    def __str__(self) -> str:
        return " + ".join(str(m) for m in self.of)

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "of": [m.to_spec() for m in self.of]}

    def reset(self) -> None:
        for member in self.of:
            member.reset()

    def prepare(self, rows: ReferenceRows) -> None:
        for member in self.of:
            member.prepare(rows)

    def time_noise(self, shape: torch.Size, t: float) -> torch.Tensor:
        return next(m for m in self.of if m.perturbs_time_embedding).time_noise(shape, t)
