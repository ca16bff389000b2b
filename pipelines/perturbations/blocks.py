"""Skipped blocks for the perturbed rows: SLG (Stable Diffusion 3.5's skip-layer guidance) and STG's residual mode
(Hyung et al., CVPR 2025, arXiv 2411.18664). A listed block is not run for those rows: its output is its input, for
both streams of a joint-attention block (docs/CONVENTIONS.md §27), as SD3's `skip_layers` does."""

from __future__ import annotations

import inspect
from typing import Any

from .base import Perturbation, RowDispatch


class SkippedBlocks(Perturbation):
    """The reference's blocks pass their inputs through for its rows."""

    def install(self, dispatches: dict[tuple[int, str], RowDispatch]) -> None:
        for block in self.adapter.blocks(self.reference.layers, self.reference.name):
            signature = inspect.signature(block.forward)

            def passthrough(*args: Any, _signature: inspect.Signature = signature, **kwargs: Any) -> Any:
                return self.adapter.block_passthrough(_signature.bind(*args, **kwargs).arguments)

            self.dispatch(dispatches, block, "forward", passthrough)
