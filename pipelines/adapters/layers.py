"""Which modules a reference's `layers` name in a denoiser (docs/CONVENTIONS.md §22, §27).

- Attention layers (pag, seg) take diffusers' `pag_applied_layers` identifiers ("mid", "down_blocks.1", "blocks.7",
  a regex) and match them as diffusers' PAGMixin does: every self-attention module (a diffusers `Attention` that is
  not cross-attention) whose qualified name contains a match, a trailing number matching only the same number
  ("blocks.1" is not "blocks.10").
- Block layers (slg, stg) are indices into the family's main block list (SD3: transformer_blocks; Flux: the double
  blocks, then the single blocks; DiT, PixArt and video transformers: their block list).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from diffusers.models.attention_processor import Attention
from torch import nn

from guidance.errors import GuidanceError


def _is_self_attention(module: nn.Module) -> bool:
    return isinstance(module, Attention) and not module.is_cross_attention


def _same_number(layer: str, name: str) -> bool:
    """diffusers' guard against partial numbers: a layer id ending in a number only matches that number."""
    layer, name = layer.split(".")[-1], name.split(".")[-1]
    return not (layer.isnumeric() and name.isnumeric() and layer != name)


def self_attention_places(denoiser: nn.Module, method: str) -> list[str]:
    """Where the denoiser's self-attention modules sit; a GuidanceError when it has none a perturbation can change."""
    names = sorted({name.rsplit(".", 1)[0] for name, module in denoiser.named_modules() if _is_self_attention(module)})
    if not names:
        raise GuidanceError(f"{method}: {type(denoiser).__name__} has no self-attention module it can perturb (a "
                            "diffusers Attention that is not cross-attention); use slg or stg, which skip its blocks, "
                            "or autoguidance.")
    return names


def attention_layers(denoiser: nn.Module, layers: Sequence[str], method: str) -> list[nn.Module]:
    """The self-attention modules the layer ids name, as diffusers' PAG pipelines find them."""
    names = self_attention_places(denoiser, method)
    found: list[nn.Module] = []
    for layer in layers:
        matches = [module for name, module in denoiser.named_modules()
                   if _is_self_attention(module) and re.search(layer, name) is not None and _same_number(layer, name)]
        if not matches:
            raise GuidanceError(f"{method}: no self-attention layer of {type(denoiser).__name__} matches {layer!r}. "
                                f"Self-attention lives in: {', '.join(names[:12]) or 'none'}"
                                f"{' …' if len(names) > 12 else ''}. Use diffusers' pag_applied_layers ids such as "
                                "'mid', 'down_blocks.1' or 'blocks.1'.")
        found += [m for m in matches if all(m is not f for f in found)]
    return found


def main_blocks(denoiser: nn.Module, lists: Sequence[str]) -> list[nn.Module]:
    """The family's main block list(s), in order."""
    return [block for attribute in lists for block in getattr(denoiser, attribute, None) or ()]


def indexed_blocks(denoiser: nn.Module, lists: Sequence[str], layers: Sequence[int], method: str) -> list[nn.Module]:
    blocks = main_blocks(denoiser, lists)
    wrong = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if wrong:
        raise GuidanceError(f"{method}: block indices {wrong} are outside {type(denoiser).__name__}'s "
                            f"{len(blocks)} blocks ({' then '.join(lists)}); use 0 to {len(blocks) - 1}.")
    return [blocks[layer] for layer in layers]


def self_attention_in(blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """The self-attention modules inside `blocks` (STG's attention mode)."""
    return [module for block in blocks for module in block.modules() if _is_self_attention(module)]
