"""References: what the conditional prediction is contrasted against."""

from ..registry import Registry
from .base import Reference, ReferenceRows
from .combined import Combined
from .icg import ICG
from .tsg import TSG
from .uncond import Uncond

REFERENCES: Registry[Reference] = Registry("reference")
for _cls in (Uncond, ICG, TSG, Combined):
    REFERENCES.register(_cls)

__all__ = ["REFERENCES", "Reference", "ReferenceRows"]
