"""DiT: class-conditional transformer; its CFG batch is [cond; uncond] with the null class 1000.

Every block has its own timestep embedder (`transformer_blocks[i].norm1.emb.timestep_embedder`, block 0's also
feeds the final layer): TSG perturbs all of them with the same noise. Only the first half of the output
channels is the prediction (learned sigma). The pipeline steps its doubled batch through the scheduler and keeps
the first half, so a CFG++ step is made on B rows and repeated to 2B.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from guidance.errors import GuidanceError

from ..call import DenoiserCall
from .doubled import DoubledBatchAdapter


class DiTAdapter(DoubledBatchAdapter):
    denoiser_attr = "transformer"
    pag_layers = ("blocks.1",)  # our choice, as PixArt's (no published default for DiT)
    block_lists = ("transformer_blocks",)
    skip_layers = (14,)  # our choice: the middle of DiT-XL/2's 28 blocks
    cond_first = True
    embedding_fields = ()
    class_field = ("class_labels",)

    @property
    def condition_kind(self) -> str:
        return "class"

    def num_classes(self, pipe: Any) -> int | None:
        return int(self.denoiser.config.num_embeds_ada_norm)

    def time_embedders(self) -> list[nn.Module]:
        return [block.norm1.emb.timestep_embedder for block in self.denoiser.transformer_blocks]

    def check_doubled(self, call: DenoiserCall) -> None:
        labels = call.get(self.class_field)
        null = self.num_classes(self.pipe)
        if call.batch % 2 or labels is None or not bool((labels[call.batch // 2:] == null).all()):
            raise GuidanceError("The DiTPipeline call is not running classifier-free guidance. With guidance.attach "
                                "pass guidance_scale > 1, or use guidance.run, which does it for you.")

    def scheduler_batch(self, latents: torch.Tensor, rows: int) -> torch.Tensor:
        return latents.repeat(rows // latents.shape[0], *([1] * (latents.ndim - 1)))
