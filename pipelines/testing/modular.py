"""The modular pipelines diffusers ships for the tiny families, built from a tiny standard pipeline's components, and
their calls with the standard pipeline's arguments (for tests of `guidance.as_guider`).

diffusers 0.35 ships modular SDXL, Wan and Flux; later versions add Qwen-Image and SD3. Flux's modular loop has no
guider (it calls the transformer once per step with the distilled guidance embedding), so no guider can serve it.
"""

from __future__ import annotations

from typing import Any

import diffusers
import diffusers.modular_pipelines as modular
import torch
from diffusers.modular_pipelines import PipelineState

# family → the names its modular blocks have had across diffusers versions
BLOCKS = {"sdxl": ("StableDiffusionXLAutoBlocks",), "wan": ("WanBlocks", "WanAutoBlocks"),
          "qwenimage": ("QwenImageAutoBlocks",), "sd3": ("StableDiffusion3AutoBlocks",), "wan22": ("Wan22Blocks",)}
NO_GUIDER = {"flux": "diffusers' modular Flux pipeline has no guider: its loop calls the transformer once per step "
                     "with Flux's distilled guidance embedding and runs no true CFG, so there is nothing to guide"}
# the standard pipeline's call arguments that the modular blocks do not take: the guider holds the guidance
_STANDARD_ONLY = ("guidance_scale", "true_cfg_scale", "output_type")


def modular_pipeline(family: str, standard: Any) -> Any:
    """The modular pipeline of `family` on the components of `standard` (the text encoder step left out where
    `standard` has no text encoder); LookupError with the reason where the installed diffusers has none to guide."""
    if family in NO_GUIDER:
        raise LookupError(NO_GUIDER[family])
    names = BLOCKS[family]
    blocks_class = next((getattr(modular, name) for name in names if hasattr(modular, name)), None)
    if blocks_class is None:
        raise LookupError(f"diffusers {diffusers.__version__} ships no modular {family} pipeline ({', '.join(names)})")
    blocks = blocks_class()
    if getattr(standard, "text_encoder", None) is None:
        blocks.sub_blocks.pop("text_encoder")
    pipe = blocks.init_pipeline()
    # register_components: 0.35's update_components refuses modules not loaded through a ComponentSpec
    pipe.register_components(**{name: component for name, component in standard.components.items()
                                 if name in pipe._component_specs and component is not None})
    settings = {name: standard.config[name] for name in pipe._config_specs if name in standard.config}
    if settings:  # Wan 2.2's boundary_ratio
        pipe.update_components(**settings)
    return pipe


def modular_latents(pipe: Any, kwargs: dict[str, Any]) -> torch.Tensor:
    """The final latents of `pipe` called with a standard pipeline's arguments (through a PipelineState: 0.35 takes
    embeddings only there)."""
    state = PipelineState()
    for name, value in kwargs.items():
        if name not in _STANDARD_ONLY:
            state.set(name, value)
    return pipe(state, output="latents")


def standard_latents(family: str, standard: Any, out: Any, kwargs: dict[str, Any]) -> torch.Tensor:
    """The final latents of a standard pipeline's output (`output_type="latent"`) in the modular pipeline's layout:
    Qwen-Image's packed tokens unpacked to (batch, channels, 1, height, width)."""
    latents = out.frames if hasattr(out, "frames") else out.images
    if family == "qwenimage":
        return standard._unpack_latents(latents, kwargs["height"], kwargs["width"], standard.vae_scale_factor)
    return latents
