"""Qwen-Image (QwenImagePipeline): an MMDiT on packed latent tokens, flow matching, true CFG as two separate
transformer calls (timestep/1000). After combining, the pipeline rescales each token of the combined prediction to
the norm of the conditional one (`comb · ‖cond‖/‖comb‖` over the last dim); the guided prediction gets that same
rescale here, so it stays as the pipeline does it. At CFG-Zero*'s zero-init steps the negative call returns ones, so
that the pipeline's rescale of a zero prediction is 0, not 0/0."""

from __future__ import annotations

import torch
from torch import nn

from .true_cfg import TrueCFGAdapter


class QwenImageAdapter(TrueCFGAdapter):
    denoiser_attr = "transformer"
    timestep_scale = 1000.0
    skip_keys = frozenset({"img_shapes", "txt_seq_lens"})
    joint_blocks = True
    block_lists = ("transformer_blocks",)
    rescales_to_conditional = True

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_text_embed.timestep_embedder]

    def zero_output(self, sample: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(sample)  # its out_channels count unpacked channels; the output is packed like the input
