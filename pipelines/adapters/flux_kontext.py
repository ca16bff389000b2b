"""Flux Kontext (FluxKontextPipeline, pipelines/flux/pipeline_flux_kontext.py): Flux.1 with an input image. The
image's packed latent tokens are appended to the generated ones along the sequence (`torch.cat([latents,
image_latents], dim=1)`), their position ids are the generated tokens' with the first coordinate 1 instead of 0, and
the pipeline keeps `noise_pred[:, :latents.size(1)]` of both calls before its true-CFG combination. Everything else
is Flux's: true CFG as two separate calls (timestep/1000, flow matching), `guidance_scale` the distilled-guidance
input. x̂0-space rules (APG, AG's cosine) and CFG-Zero*'s projection see the generated tokens only; the image's
tokens pass through from the conditional output, and the pipeline drops them.
"""

from __future__ import annotations

import torch

from ..call import DenoiserCall
from .flux import FluxAdapter


def leading_generated(ids: torch.Tensor | None) -> int | None:
    """The generated tokens of a Flux-family sequence: the leading position ids whose first coordinate is 0 (input
    images' tokens carry another one). None when every token is generated. Read once per pipeline call."""
    if ids is None:
        return None
    ids = ids[0] if ids.ndim == 3 else ids
    generated = int((ids[:, 0] == 0).sum())
    return None if generated == ids.shape[0] else generated


class FluxKontextAdapter(FluxAdapter):
    def generated_tokens(self, call: DenoiserCall) -> int | None:
        return leading_generated(call.get(("img_ids",)))
