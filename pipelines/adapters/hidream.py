"""HiDream-I1 (diffusers' pipelines/hidream_image/pipeline_hidream_image.py HiDreamImagePipeline): a sparse (MoE)
DiT with double-stream then single-stream blocks, flow matching, on a doubled [uncond; cond] batch.

- The pipeline NEGATES the transformer's output (`noise_pred = -noise_pred`) before `uncond + s·(cond − uncond)`,
  so the flow prediction is −output: `prediction` and `with_prediction` apply that sign, and the pipeline's own
  negation of the guided output gives exactly g.
- Time: the argument is `timesteps` (the scheduler's timestep); the time embedding is `transformer.t_embedder`
  (the pooled-text embedding is added after it).
- Conditions: T5 states (`encoder_hidden_states_t5`), pooled CLIP (`pooled_embeds`) and the stacked Llama-3 layer
  states (`encoder_hidden_states_llama3`, layer first: its batch is dimension 1).
- Blocks (slg, stg residual): the double-stream blocks, then the single-stream ones; a skipped double block returns
  its inputs (image states, and the text states the model then cuts back to its own length).
- pag and seg are refused: HiDream's attention is its own joint processor, for which no identity path is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from torch import nn

from guidance.errors import GuidanceError

from .doubled import DoubledBatchAdapter


class HiDreamAdapter(DoubledBatchAdapter):
    denoiser_attr = "transformer"
    negated = True
    timestep_field = ("timesteps",)
    batch_dims = MappingProxyType({"encoder_hidden_states_llama3": 1})
    embedding_fields = (("encoder_hidden_states_t5",), ("encoder_hidden_states_llama3",), ("pooled_embeds",))
    block_lists = ("double_stream_blocks", "single_stream_blocks")
    skip_layers = (7,)  # our choice: a double-stream block at SD3.5 Medium's skip-layer depth (HiDream has 16)

    def attention_layers(self, layers: Sequence[str] | None, method: str) -> list[nn.Module]:
        raise GuidanceError(f"{method} replaces self-attention maps, and HiDream's attention is a joint image–text "
                            "processor of its own for which guidance has no identity path. Use slg or stg (mode "
                            "residual), which skip whole blocks, or tsg.")

    def block_passthrough(self, arguments: dict[str, Any]) -> Any:
        text = arguments.get("encoder_hidden_states")
        return arguments["hidden_states"] if text is None else (arguments["hidden_states"], text)

    def time_embedders(self) -> list[nn.Module]:
        return [self.denoiser.t_embedder]
