"""CogVideoX (CogVideoXPipeline, diffusers pipelines/cogvideo/pipeline_cogvideox.py): a video DiT on 5-D latents laid
out (batch, frames, channels, height, width), frames BEFORE channels; v-prediction with CogVideoX's own DDIM or
DPM schedulers (their SNR-shifted `alphas_cumprod` give a and s). One transformer call per step on the doubled batch
[uncond; cond] with the scheduler's timestep; the pipeline combines `u + s·(c − u)` in float32, nothing after it.

Its `use_dynamic_cfg` rewrites the pipeline's scale every step after the transformer call: with guidance it would
have no effect (the spec sets the strength), so it is refused. The time embedding is `transformer.time_embedding`;
the main block list is `transformer.transformer_blocks`, whose blocks return (hidden_states, encoder_hidden_states).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from guidance.errors import GuidanceError

from ..call import DenoiserCall
from .doubled import DoubledBatchAdapter

if TYPE_CHECKING:
    from ..session import Run

DYNAMIC_CFG = ("CogVideoX's use_dynamic_cfg changes the pipeline's own scale at every step, which guidance replaces "
               "by the spec's: drop use_dynamic_cfg and put a schedule in the spec instead (e.g. schedule: cosine).")


class CogVideoXAdapter(DoubledBatchAdapter):
    denoiser_attr = "transformer"
    skip_keys = frozenset({"image_rotary_emb"})
    joint_blocks = True
    hidden_states_first = True
    block_lists = ("transformer_blocks",)
    skip_layers = (15,)  # our choice: the middle of CogVideoX-2b's 30 blocks
    attention_refusal = ("its attention runs the video and text tokens jointly in one sequence, which the identity "
                         "attention does not reproduce. Use slg or stg with mode residual (skipped blocks), tsg, or "
                         "autoguidance.")

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self._scale_at_call: float | None = None

    def run_kwargs(self, kwargs: dict[str, Any], needs_pipeline_reference: bool) -> dict[str, Any]:
        if kwargs.get("use_dynamic_cfg"):
            raise GuidanceError(DYNAMIC_CFG)
        return super().run_kwargs(kwargs, needs_pipeline_reference)

    def check_call(self, call: DenoiserCall) -> None:
        self._scale_at_call = getattr(self.pipe, "_guidance_scale", None)

    def end_step(self, run: Run) -> None:
        """With attach: the pipeline's scale changed between its transformer call and its scheduler step only if
        use_dynamic_cfg is on."""
        if getattr(self.pipe, "_guidance_scale", None) != self._scale_at_call:
            raise GuidanceError(DYNAMIC_CFG)

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.time_embedding]

    def zero_output(self, sample: torch.Tensor) -> torch.Tensor:
        """Zeros shaped like the output: the input's channels (dim 2; an image-to-video input has more) become the
        config's out_channels."""
        shape = list(sample.shape)
        shape[2] = self.denoiser.config.out_channels
        return sample.new_zeros(shape)
