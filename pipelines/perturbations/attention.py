"""Identity self-attention for the perturbed rows: PAG (Ahn et al., ECCV 2024, arXiv 2403.17377) and STG's attention
mode (Hyung et al., CVPR 2025, arXiv 2411.18664). The self-attention map of the chosen layers becomes the identity,
so a token's attention output is its own value: SA(Q, K, V) = V.

Computed as diffusers' PAG processors compute their perturbed half (docs/CONVENTIONS.md §22):
- self-attention (UNet, PixArt, DiT): PAGIdentitySelfAttnProcessor2_0 — spatial and group norm, the value
  projection, the output projection, the residual connection and the output rescale factor;
- joint attention (SD3's MMDiT): PAGJointAttnProcessor2_0 — image tokens attend only to themselves and to the text
  tokens, text tokens attend to everything. Unlike diffusers' PAG processor it also applies the block's query/key
  norms (SD3.5's qk_norm), as SD3's own attention does; without them (SD3 medium) it is the same computation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from guidance.errors import GuidanceError

from ..adapters.layers import self_attention_in
from .base import Perturbation, RowDispatch


def identity_attention(attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                       **kwargs: Any) -> Any:
    """The attention module's output with its self-attention map replaced by the identity."""
    if encoder_hidden_states is not None and getattr(attn, "add_q_proj", None) is not None:
        return _joint_identity(attn, hidden_states, encoder_hidden_states)
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = hidden_states.shape
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.view(shape[0], shape[1], shape[2] * shape[3]).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    hidden_states = attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))
    if len(shape) == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def _heads(attn: Any, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, attn.heads, head_dim).transpose(1, 2)


def _joint_identity(attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple:
    batch, tokens = hidden_states.shape[0], hidden_states.shape[1]
    key = attn.to_k(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (_heads(attn, x, head_dim) for x in (attn.to_q(hidden_states), key, attn.to_v(hidden_states)))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    context = [_heads(attn, proj(encoder_hidden_states), head_dim)
               for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)]
    if attn.norm_added_q is not None:
        context[0] = attn.norm_added_q(context[0])
    if attn.norm_added_k is not None:
        context[1] = attn.norm_added_k(context[1])
    query, key, value = (torch.cat([x, c], dim=2) for x, c in zip((query, key, value), context, strict=True))
    length = query.shape[2]
    mask = torch.zeros((length, length), device=query.device, dtype=query.dtype)
    mask[:tokens, :tokens] = float("-inf")
    mask[:tokens, :tokens].fill_diagonal_(0)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[None, None], dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    hidden_states, encoder_hidden_states = out[:, :tokens], out[:, tokens:]
    if not attn.context_pre_only:
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    return hidden_states, encoder_hidden_states


class IdentityAttention(Perturbation):
    """PAG, or STG with mode attention: identity self-attention in the reference's layers."""

    def install(self, dispatches: dict[tuple[int, str], RowDispatch]) -> None:
        reference = self.reference
        if reference.layer_kind == "blocks":  # STG: the self-attention inside the chosen blocks
            self.adapter.check_attention(reference.name)
            modules = self_attention_in(self.adapter.blocks(reference.layers, reference.name))
            if not modules:
                raise GuidanceError(f"{reference.name} with mode attention: the chosen blocks of "
                                    f"{type(self.adapter.denoiser).__name__} hold no self-attention module it can "
                                    "perturb (a diffusers Attention that is not cross-attention); use mode residual, "
                                    "which skips the blocks.")
        else:
            modules = self.adapter.attention_layers(reference.layers, reference.name)
        for module in modules:
            self.dispatch(dispatches, module, "processor", identity_attention)
