"""Z-Image (diffusers' pipelines/z_image/pipeline_z_image.py ZImagePipeline): a single-stream DiT on unpacked latents,
flow matching, on a doubled batch [cond; uncond] (`prompt_embeds + negative_prompt_embeds`).

- The denoiser takes and returns LISTS of per-sample tensors: `x` holds each sample's latents as (channels, 1,
  height, width), `cap_feats` each sample's caption features (lengths differ per prompt), and the output is one
  tensor per sample. `per_sample` stacks `x` (the session reads it as the batch) and keeps `cap_feats` as a per-row
  list (DenoiserCall `lists`); the call turns `x` back into a list for the denoiser and stacks the output list. The
  pipeline reads the stacked output as it reads the list (`out[:B]`, `out[j]`, iteration).
- Time: the argument `t` is (1000 − timestep)/1000 (0 is noise; the pipeline hard-codes 1000). The transformer
  predicts x0 − n, which the pipeline negates (`noise_pred = -noise_pred`) before the scheduler's step: guided in the
  scheduler's sign (`negated`). The time embedding is `transformer.t_embedder`; the main blocks are `layers`.
- Combination: `pos + g·(pos − neg)` per sample, so the pipeline's `guidance_scale` g is diffusers' w − 1 (and CFG is
  on for g > 0, which guidance.run sets). Then `cfg_normalization` c > 0 caps the norm of each combined prediction
  (over the whole sample) at c·‖pos‖; guidance applies that cap to its guided prediction (`after_combination`), and
  since the pipeline caps the returned g once more against itself, divides by c where c < 1 so that cap gives g.
- `cfg_truncation` < 1 drops the negative rows on the late steps (a batch of the conditional rows only): refused,
  a schedule (interval, steps) ends guidance instead.
- icg (gaussian) draws each row's caption features with that row's own statistics (RowView gives a list field row by
  row); its `prompt` source is not implemented (no list-valued prompt bank). seg is refused (the queries of the
  image, caption and padding tokens share one sequence, which is no 2-D token grid). pag and stg's attention
  mode work: the identity attention of Z-Image's processor is the value path `to_out(to_v(x))`.
- ZImageOmniPipeline (nested lists of images per sample) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from guidance.errors import GuidanceError

from ..call import DenoiserCall, first_output, with_first_output
from .doubled import DoubledBatchAdapter

TIME_SCALE = 1000.0  # the pipeline's `t = (1000 - timestep) / 1000`


def _as_lists(arguments: dict[str, Any]) -> dict[str, Any]:
    """The stacked latents back as the list of per-sample tensors the transformer takes."""
    return {**arguments, "x": list(arguments["x"].unbind(0))}


def _stacked(out: Any) -> Any:
    """The transformer's list of per-sample outputs as one tensor."""
    return with_first_output(out, torch.stack(list(first_output(out))))


class ZImageAdapter(DoubledBatchAdapter):
    denoiser_attr = "transformer"
    cond_first = True
    negated = True
    timestep_field = ("t",)
    embedding_fields = (("cap_feats",),)
    block_lists = ("layers",)
    skip_layers = (15,)  # our choice: the middle of Z-Image's 30 main layers (as Lumina 2's 13 of 26)

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self.normalization = 0.0

    def per_sample(self, call: DenoiserCall) -> DenoiserCall:
        x = call.arguments.get("x")
        if not isinstance(x, list) or not all(isinstance(v, torch.Tensor) and v.shape == x[0].shape for v in x):
            return call  # refused by check_call within a guided run
        call = call.with_arguments({**call.arguments, "x": torch.stack(x)})
        call.prepare, call.lists, call.finish = _as_lists, frozenset({"cap_feats"}), _stacked
        return call

    def check_call(self, call: DenoiserCall) -> None:
        if not isinstance(call.sample, torch.Tensor):
            raise GuidanceError(
                f"{type(self.pipe).__name__} passes its transformer nested lists of images per sample (Z-Image Omni), "
                "which guidance cannot split into rows. Use ZImagePipeline with guidance, or this pipeline's own "
                "guidance_scale without guidance.")

    def check_pipeline_call(self, needs_pipeline_reference: bool) -> None:
        super().check_pipeline_call(needs_pipeline_reference)
        truncation = getattr(self.pipe, "_cfg_truncation", None)
        if truncation is not None and float(truncation) < 1.0:
            raise GuidanceError(
                f"{type(self.pipe).__name__}'s cfg_truncation < 1 drops the negative rows on the late steps, which "
                "guidance needs on every step. Leave it at 1 and end the guidance with the spec's schedule instead "
                "(e.g. interval or steps).")
        self.normalization = float(getattr(self.pipe, "_cfg_normalization", 0.0) or 0.0)

    def after_combination(self, cond: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        c = self.normalization
        if c <= 0.0:
            return guided
        pred = guided.float()
        norm = torch.linalg.vector_norm(pred.flatten(1), dim=1)
        limit = torch.linalg.vector_norm(cond.float().flatten(1), dim=1) * c
        factor = torch.where(norm > limit, limit / norm, torch.ones_like(norm))
        if c < 1.0:  # the pipeline caps the returned g again at c·‖g‖
            factor = factor / c
        return (pred * factor.view(-1, *[1] * (pred.ndim - 1))).to(guided.dtype)

    def scheduler_prediction(self, prediction: torch.Tensor) -> torch.Tensor:
        return prediction.squeeze(2)  # the pipeline's `noise_pred.squeeze(2)`: the frame dim of (B, C, 1, H, W)

    def scheduler_timestep(self, timestep: float) -> float:
        return (1.0 - timestep) * TIME_SCALE

    def time_embedders(self) -> list[nn.Module]:
        return [denoiser.t_embedder for denoiser in self.denoisers]

    def block_passthrough(self, arguments: dict[str, Any]) -> Any:
        return arguments["x"]

    def attention_layers(self, layers: Sequence[str] | None, method: str) -> list[nn.Module]:
        if method == "seg":
            raise GuidanceError(
                "seg blurs self-attention queries over the image's token grid, but Z-Image's attention runs the image, "
                "caption and padding tokens as one sequence, which is no grid. Use pag (with `layers`, e.g. "
                "['layers.1']), slg or tsg.")
        return super().attention_layers(layers, method)
