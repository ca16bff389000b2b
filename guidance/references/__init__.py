"""References: what the conditional prediction is contrasted against."""

from ..registry import Registry
from .autoguidance import Autoguidance
from .base import Reference, ReferenceRows
from .combined import Combined
from .gfcg import GFCG
from .icg import ICG
from .pag import PAG
from .seg import SEG
from .slg import SLG
from .stg import STG
from .tsg import TSG
from .uncond import Uncond

REFERENCES: Registry[Reference] = Registry("reference")
for _cls in (Uncond, ICG, TSG, Combined, PAG, SEG, SLG, STG, Autoguidance, GFCG):
    REFERENCES.register(_cls)

__all__ = ["REFERENCES", "Reference", "ReferenceRows"]
