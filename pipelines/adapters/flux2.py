"""FLUX.2 (Flux2Pipeline, Flux2KleinPipeline; pipelines/flux2/): an MMDiT on packed latent tokens (8 double-stream
and 48 single-stream blocks in FLUX.2 [dev]), flow matching (timestep/1000). Input images' tokens are appended to the
generated ones along the sequence (position ids with a time coordinate of 10 or more, the generated ones 0) and the
pipelines keep `noise_pred[:, :latents.size(1)]`: guidance acts on the generated tokens only.

- Flux2Pipeline (FLUX.2 [dev]) is guidance-distilled: one transformer call per step, `guidance_scale` the
  distilled-guidance input (the caller's), no negative branch. References built from the conditional call work
  (slg, tsg, icg, autoguidance); `uncond` is refused.
- Flux2KleinPipeline runs the prompt and the negative prompt as two separate calls, switched on by
  `guidance_scale` > 1, combined with `neg + s·(cond − neg)`, nothing after; a step-distilled Klein
  (`is_distilled`) has no negative call and is served as Flux2Pipeline.

FLUX.2's attention modules are not diffusers `Attention` modules: pag and seg are refused (use slg).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..call import DenoiserCall
from .flux import FluxLayout
from .flux_kontext import leading_generated
from .separate import SeparateCallsAdapter


class Flux2Adapter(FluxLayout, SeparateCallsAdapter):
    # our choice: the middle double blocks and the first single blocks of FLUX.2 [dev]'s 8 + 48
    skip_layers = (3, 4, 8, 9, 10)

    @property
    def negative_call(self) -> bool:
        return False

    def generated_tokens(self, call: DenoiserCall) -> int | None:
        return leading_generated(call.get(("img_ids",)))

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_guidance_embed.timestep_embedder]

    def run_kwargs(self, kwargs: dict[str, Any], needs_pipeline_reference: bool) -> dict[str, Any]:
        if not self.negative_call:
            return kwargs  # no CFG switch; FLUX.2 [dev]'s guidance_scale stays the distilled-guidance input
        return super().run_kwargs(kwargs, needs_pipeline_reference)  # Klein: guidance_scale > 1 switches CFG on


class Flux2KleinAdapter(Flux2Adapter):
    @property
    def negative_call(self) -> bool:
        return not self.pipe.config.get("is_distilled", False)
