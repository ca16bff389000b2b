"""Load the pipeline a run config names (bundled digits models, a local folder, or a hub id) and set its
scheduler; every failure becomes a GuidanceError that names the problem and the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import deprecation_utils

from ..errors import GuidanceError, shorten
from ..pipelines.adapters import adapter_for
from ..pipelines.bundled import BUNDLED
from ..pipelines.class_conditional import ClassConditionalPipeline
from ..pipelines.digits import load_pipeline
from ..pipelines.schedulers import set_scheduler
from .config import ModelSection

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# from_pretrained's dtype argument: `dtype` in diffusers releases that deprecate `torch_dtype` (they warn on it;
# huggingface/diffusers#14205), `torch_dtype` in older ones, which do not know `dtype`
DTYPE_KEYWORD = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def device_of(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GuidanceError(f"model.device is {shorten(name)} but this machine has no CUDA device. Use device: auto "
                            "or cpu.")
    return name


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_HINT = ("Weights in pickle files (.bin, .pt, .ckpt) can run code when loaded, so only safetensors load by "
               "default; for a model you trust, pass --allow-pickle (Python: load_model(..., allow_pickle=True)).")


def pickle_only(folder: Path) -> list[str]:
    """The component folders (or the folder itself) that hold pickle weights and no safetensors."""
    places = [folder, *(p for p in folder.iterdir() if p.is_dir())]
    return [str(place) for place in places
            if any(f.suffix in PICKLE_SUFFIXES for f in place.iterdir() if f.is_file())
            and not any(f.suffix == ".safetensors" for f in place.iterdir() if f.is_file())]


def load_model(section: ModelSection, scheduler: str = "default", allow_pickle: bool = False) -> Any:
    """The pipeline of `section`, on its device and dtype, checked to be a supported family, with the scheduler
    `scheduler` (a run config's `sampler.scheduler`; "default" keeps the pipeline's own). Weights load from
    safetensors only and no code from the model's folder or repository runs, unless `allow_pickle`."""
    dtype = DTYPES[section.dtype]
    path = BUNDLED.get(section.path, Path(section.path))
    safetensors = None if allow_pickle else True
    try:
        if Path(path).is_dir():
            index = Path(path) / "model_index.json"
            if not index.is_file():
                raise GuidanceError(f"'{path}' is a folder but has no model_index.json: point model.path at a "
                                    "diffusers pipeline folder (saved with save_pretrained).")
            unsafe = [] if allow_pickle else pickle_only(Path(path))
            if unsafe:
                raise GuidanceError(f"'{path}' has only pickle weights in {', '.join(unsafe)}. {PICKLE_HINT}")
            components = json.loads(index.read_text())
            if components.get("_class_name") == ClassConditionalPipeline.__name__:
                pipe = load_pipeline(path, allow_pickle=allow_pickle)
            else:  # components saved as absent (SD3 without T5) are passed as None, which from_pretrained requires
                absent = {name: None for name, value in components.items()
                          if isinstance(value, list) and value[:1] == [None]}
                pipe = DiffusionPipeline.from_pretrained(path, **{DTYPE_KEYWORD: dtype}, use_safetensors=safetensors,
                                                         **absent)
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", section.path) and not section.path.startswith("."):
            pipe = DiffusionPipeline.from_pretrained(section.path, **{DTYPE_KEYWORD: dtype},
                                                     use_safetensors=safetensors)
        else:
            raise GuidanceError(f"No model at {shorten(section.path, 300)}. Use a bundled model "
                                f"({', '.join(BUNDLED)}), a local pipeline folder, or a hub id such as "
                                "stabilityai/stable-diffusion-xl-base-1.0.")
    except GuidanceError:
        raise
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:300]
        raise GuidanceError(f"Could not load the model {shorten(section.path, 300)}: {reason}. A hub id needs network "
                            "access (or a local copy in the Hugging Face cache); offline, use a local folder or a "
                            f"bundled model ({', '.join(BUNDLED)}). {'' if allow_pickle else PICKLE_HINT}") from None
    adapter_for(pipe)  # refuses unsupported pipelines with the list of supported ones
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device_of(section.device))
    return set_scheduler(pipe if pipe.dtype == dtype else pipe.to(dtype=dtype), scheduler)
