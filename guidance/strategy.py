"""Base class of every strategy on the four axes (reference, rule, schedule, policy).

A strategy is a small pydantic model: its fields are the paper's parameters (validated strictly), its
private attributes hold the per-run state (reset at the start of every pipeline call).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Strategy(BaseModel):
    """A named, registered method with validated parameters."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True)

    name: ClassVar[str]
    axis: ClassVar[str]
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # why `guidance.as_guider` cannot serve it in a diffusers modular pipeline ("": it can; pipelines/guider.py)
    guider_refusal: ClassVar[str] = ""

    def to_spec(self) -> dict[str, Any]:
        """The mapping that `load` turns back into an equal strategy."""
        return {"name": self.name, **self.model_dump()}

    def __str__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.model_dump().items())
        return f"{self.name}({params})"
