"""Sana (diffusers' pipelines/sana/pipeline_sana.py SanaPipeline): a linear-attention DiT on a doubled
[uncond; cond] batch, combined as `uncond + s·(cond − uncond)` and handed to the scheduler (after dropping a learned
variance half, if the transformer has one, which the 1.x checkpoints do not).

- Prediction: flow matching (the checkpoints' DPMSolverMultistepScheduler with `flow_prediction` and flow sigmas, or
  FlowMatchEulerDiscreteScheduler): the scheduler's settings decide it, as for every family.
- Time: the pipeline passes timestep × `transformer.config.timestep_scale` (1.0 for Sana 1.x).
- The time embedding is `transformer.time_embed` (AdaLayerNormSingle's `emb.timestep_embedder`); the main block list
  is `transformer_blocks`, whose `attn1` is the self-attention (pag, seg: diffusers' SanaPAGPipeline default
  "transformer_blocks.0").
"""

from __future__ import annotations

import torch
from torch import nn

from .doubled import DoubledBatchAdapter


class SanaAdapter(DoubledBatchAdapter):
    denoiser_attr = "transformer"
    pag_layers = ("transformer_blocks.0",)  # diffusers' SanaPAGPipeline default
    block_lists = ("transformer_blocks",)
    skip_layers = (7,)  # our choice: SD3.5 Medium's first skip-layer depth (7 of 24) on Sana 1.6B's 20 blocks

    @property
    def timestep_scale(self) -> float:  # type: ignore[override]
        return 1.0 / self.denoiser.config.timestep_scale

    def time_embedders(self) -> list[nn.Module]:
        embed = self.denoiser.time_embed
        return [getattr(embed, "emb", embed).timestep_embedder]

    def encode_prompts(self, prompts: list[str], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, device=self.pipe._execution_device,
            max_sequence_length=like["encoder_hidden_states"].shape[1], complex_human_instruction=None)
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}
