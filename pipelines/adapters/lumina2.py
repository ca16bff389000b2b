"""Lumina Image 2.0 (Lumina2Pipeline, pipelines/lumina2/pipeline_lumina2.py): a DiT on unpacked latents (batch,
channels, height, width), flow matching with the time reversed: the transformer gets 1 − t/1000 (0 is noise) and
predicts x0 − n, which the pipeline negates (`noise_pred = -noise_pred`) before the scheduler's step. The prompt and
the negative prompt run as two separate calls per step, switched on by `guidance_scale` > 1, combined with
`neg + s·(cond − neg)` and then, with `cfg_normalization` (default on), rescaled to the conditional prediction's norm
along the last dim; guidance applies that rescale to its guided prediction, so `cfg` stays the pipeline's own.

Guided in the scheduler's convention (the negated output). `cfg_trunc_ratio` < 1 (no negative call on the late
steps) is refused: a schedule decides which steps are guided. guidance.run reads the call's `cfg_normalization`;
with guidance.attach the pipeline's default (on) is assumed.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from guidance.errors import GuidanceError

from .separate import SeparateCallsAdapter


class Lumina2Adapter(SeparateCallsAdapter):
    denoiser_attr = "transformer"
    negated = True
    embedding_fields = (("encoder_hidden_states",),)
    block_lists = ("layers",)
    skip_layers = (13,)  # our choice: the middle of Lumina Image 2.0's 26 joint blocks

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self.normalization = True

    def scheduler_timestep(self, timestep: float) -> float:
        return (1.0 - timestep) * self.pipe.scheduler.config.num_train_timesteps

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_caption_embed.timestep_embedder]

    def run_kwargs(self, kwargs: dict[str, Any], needs_pipeline_reference: bool) -> dict[str, Any]:
        if needs_pipeline_reference and kwargs.get("cfg_trunc_ratio", 1.0) < 1.0:
            raise GuidanceError(
                "Lumina2Pipeline's cfg_trunc_ratio < 1 drops the negative-prompt call on the late steps, which "
                "guidance needs on every guided step. Leave it at 1 and end the guidance with the spec's schedule "
                "instead (e.g. interval or steps).")
        self.normalization = bool(kwargs.get("cfg_normalization", True))
        return super().run_kwargs(kwargs, needs_pipeline_reference)

    @property
    def rescales_to_conditional(self) -> bool:
        return self.normalization
