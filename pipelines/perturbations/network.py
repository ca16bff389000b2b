"""Autoguidance's reference network (Karras et al., NeurIPS 2024, arXiv 2406.02507): the reference rows run through a
second, weaker denoiser of the same class — a module given from Python, or loaded (safetensors only) from a local
folder or a bundled model's name, the denoiser's own sub-folder of a pipeline folder. It runs in a call of its own,
on the denoiser's device and dtype."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from guidance.errors import GuidanceError, shorten

from ..bundled import BUNDLED
from .base import Perturbation, RowDispatch

# Config entries that fix a denoiser's inputs and outputs: the weaker model must share them.
INTERFACE = ("in_channels", "out_channels", "cross_attention_dim", "num_class_embeds", "addition_embed_type",
             "joint_attention_dim", "pooled_projection_dim", "caption_channels", "patch_size", "sample_size")


class WeakerNetwork(Perturbation):
    """The reference's own network evaluates its rows."""

    _network: nn.Module | None = None

    @property
    def network(self) -> nn.Module | None:
        return self._network

    def install(self, dispatches: dict[tuple[int, str], RowDispatch]) -> None:
        model = self.reference.model
        denoiser = self.adapter.denoiser
        network = model if isinstance(model, nn.Module) else self._load(str(model), type(denoiser))
        if type(network) is not type(getattr(denoiser, "_orig_mod", denoiser)):
            raise GuidanceError(f"autoguidance needs a weaker {type(denoiser).__name__} (the denoiser's class, same "
                                f"call signature); its model is a {type(network).__name__}.")
        different = [key for key in INTERFACE if denoiser.config.get(key) != network.config.get(key)]
        if different:
            pairs = ", ".join(f"{key}: {network.config.get(key)} vs {denoiser.config.get(key)}" for key in different)
            raise GuidanceError(f"autoguidance: the weaker {type(network).__name__} takes other inputs than the "
                                f"denoiser ({pairs}); guide with a smaller or shorter-trained model of the same inputs "
                                "and outputs.")
        parameter = next(denoiser.parameters(), None)
        if parameter is not None and not isinstance(model, nn.Module):
            network = network.to(parameter.device, parameter.dtype)
        self._network = network.eval()

    def remove(self) -> None:
        super().remove()
        self._network = None

    def _load(self, name: str, cls: type) -> nn.Module:
        folder = BUNDLED.get(name, Path(name))
        if (folder / "model_index.json").is_file():
            folder = folder / self.adapter.denoiser_attr
        if not (folder / "config.json").is_file():
            raise GuidanceError(f"autoguidance: no model at {shorten(name, 300)}. Give a bundled model "
                                f"({', '.join(BUNDLED)}), a folder with the weaker {cls.__name__} (config.json and "
                                "safetensors weights) or its pipeline folder, or, from Python, the module itself.")
        stored = json.loads((folder / "config.json").read_text()).get("_class_name")
        if stored != cls.__name__:
            raise GuidanceError(f"autoguidance needs a weaker {cls.__name__} (the denoiser's class, same call "
                                f"signature); {folder} holds a {stored}.")
        try:
            return cls.from_pretrained(folder, use_safetensors=True)
        except (OSError, ValueError) as error:
            raise GuidanceError(f"autoguidance: could not load the weaker {cls.__name__} from {folder} "
                                f"({' '.join(str(error).split())[:200]}); it loads from safetensors only.") from None
