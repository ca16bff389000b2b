"""`guidance generate`: images (PNG) or videos (animated WebP, media.py says why) from a run config, with the full
resolved config, seed and library versions in every file's metadata, so that `--from-image` regenerates an image or
video bit for bit on the same machine. Writes are
atomic, nothing is overwritten without `overwrite`, and every target is checked before any work starts."""

from __future__ import annotations

import inspect
import json
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from PIL import Image
from tqdm.auto import tqdm

import guidance

from ..errors import GuidanceError
from ..pipelines.adapters import adapter_for
from ..pipelines.api import run
from .config import RunConfig, validate
from .loading import load_model
from .media import CONFIG_KEY, ITEM_KEY, VERSIONS_KEY, read_metadata, write_image, write_video


@dataclass(frozen=True)
class Job:
    """One pipeline call: a prompt or class label, its seed, and the files of its `batch` images (None: not written)."""

    index: int
    item: str | int
    seed: int
    files: tuple[Path | None, ...]

    @property
    def targets(self) -> list[Path]:
        return [f for f in self.files if f is not None]


def versions() -> dict[str, str]:
    return {"diffusers-guidance": guidance.__version__, "diffusers": diffusers.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def plan(config: RunConfig, out_dir: Path, only: tuple[int, int] | None = None) -> list[Job]:
    """The calls of a run; `only` = (call index, image index) keeps one call and writes one of its images."""
    prefix, batch = config.output.prefix, config.sampler.batch
    suffix = ".png" if config.sampler.frames is None else ".webp"
    jobs = []
    for i, item in enumerate(config.items()):
        files = [out_dir / f"{prefix}-{i:03d}-{j:02d}{suffix}" for j in range(batch)]
        if only is not None:
            if i != only[0]:
                continue
            files = [f if j == only[1] else None for j, f in enumerate(files)]
        jobs.append(Job(i, item, config.sampler.seed + i, tuple(files)))
    return jobs


def call_kwargs(pipe: Any, config: RunConfig, items: list[str | int], seed: int) -> dict[str, Any]:
    """The pipeline call for `items` (each `sampler.batch` times), only with arguments the pipeline accepts."""
    sampler = config.sampler
    accepted = set(inspect.signature(pipe.__call__).parameters)
    device = pipe.device if hasattr(pipe, "device") else "cpu"
    kwargs: dict[str, Any] = {"num_inference_steps": sampler.steps,
                              "generator": torch.Generator(device).manual_seed(seed), "output_type": "pil"}
    if "num_frames" in accepted and sampler.frames is None:
        raise GuidanceError(f"{type(pipe).__name__} makes videos: set sampler.frames, the frames per video (its "
                            "model card gives one, e.g. 81 for Wan), and each video is written as an animated WebP.")
    if "class_labels" in accepted:
        if not all(isinstance(item, int) for item in items):
            raise GuidanceError(f"{type(pipe).__name__} is class-conditional: give `class_labels`, not `prompts`.")
        classes = adapter_for(pipe).num_classes(pipe)  # the family's own count (DiT: 1000, digits: 10)
        null = getattr(pipe, "null_class", None)  # the digits pipelines sample unconditionally for it
        outside = sorted({item for item in items if classes is not None and item >= classes and item != null})
        if outside:
            also = "" if null is None else f", or {null} for unconditional samples"
            raise GuidanceError(f"class_labels {outside} are outside the {classes} classes of {type(pipe).__name__} "
                                f"(0 to {classes - 1}{also}).")
        kwargs["class_labels"] = [item for item in items for _ in range(sampler.batch)]
    else:
        if not all(isinstance(item, str) for item in items):
            raise GuidanceError(f"{type(pipe).__name__} is a text-to-image pipeline: give `prompts`, not "
                                "`class_labels`.")
        per_prompt = "num_videos_per_prompt" if "num_videos_per_prompt" in accepted else "num_images_per_prompt"
        kwargs.update({"prompt": list(items), per_prompt: sampler.batch})
        if config.negative_prompt is not None:
            kwargs["negative_prompt"] = [config.negative_prompt] * len(items)
    optional = {("eta", "eta"): sampler.eta if sampler.eta else None, ("height", "height"): sampler.height,
                ("width", "width"): sampler.width, ("frames", "num_frames"): sampler.frames}
    for (name, key), value in optional.items():
        if value is not None:
            if key not in accepted:
                raise GuidanceError(f"sampler.{name} is set but {type(pipe).__name__} has no `{key}` argument; "
                                    "remove it from the config.")
            kwargs[key] = value
    return kwargs


def _save(output: Image.Image | list[Image.Image], path: Path, config: RunConfig, job: Job, position: int) -> None:
    records = {CONFIG_KEY: json.dumps(config.model_dump(mode="json"), sort_keys=True),
               ITEM_KEY: json.dumps({"index": job.index, "image": position, "item": job.item, "seed": job.seed}),
               VERSIONS_KEY: json.dumps(versions())}
    if isinstance(output, Image.Image):
        write_image(output, path, records)
    else:
        write_video(list(output), path, records, config.output.fps)


def _made_from(path: Path, wanted: dict[str, Any]) -> bool:
    """`path` is an image written by `generate` from the config whose mapping is `wanted`."""
    try:
        return path.is_file() and read_metadata(path)[0] == wanted
    except GuidanceError:
        return False


def prepare(out_dir: Path, jobs: list[Job], overwrite: bool, resume: bool, config: RunConfig) -> list[Job]:
    """The jobs still to run (with `resume`, finished ones are skipped), after checking that none would overwrite a
    file without `overwrite` (resuming, a file made from this config is no conflict) and that out_dir is writable."""
    wanted = config.model_dump(mode="json")
    made = {f: resume and _made_from(f, wanted) for job in jobs for f in job.targets}  # each PNG read once
    todo = [job for job in jobs if not (resume and all(made[f] for f in job.targets))]
    existing = [str(f) for job in todo for f in job.targets if f.exists() and not made[f]]
    if existing and not overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise GuidanceError(f"Would overwrite {', '.join(existing[:3])}{more}. Pass --overwrite, or choose another "
                            "output folder (output.dir or --out).")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-")
        probe.close()
    except OSError as error:
        raise GuidanceError(f"Cannot write to the output folder '{out_dir}' ({error.strerror}). Choose a writable "
                            "output.dir or --out.") from None
    return todo


def make(pipe: Any, config: RunConfig, job: Job, stats: dict[str, Any] | None = None) -> list[Path]:
    """Run one job's pipeline call and write its images or videos; returns the files written. `stats` receives the
    call's denoiser rows and per-step telemetry (as `guidance.run`'s)."""
    result = run(pipe, config.guidance, stats=stats, **call_kwargs(pipe, config, [job.item], job.seed))
    outputs = result.images if config.sampler.frames is None else result.frames
    written = []
    for position, (output, path) in enumerate(zip(outputs, job.files, strict=True)):
        if path is not None:
            _save(output, path, config, job, position)
            written.append(path)
    return written


def generate(config: RunConfig, out_dir: Path | None = None, overwrite: bool = False, resume: bool = False,
             progress: bool = True, pipe: Any = None, only: tuple[int, int] | None = None,
             allow_pickle: bool = False) -> list[Path]:
    """Write the config's images; `only` = (job index, image index) restricts the output to one image;
    `allow_pickle` lets the model load from pickle weights (see loading.load_model)."""
    out_dir = Path(out_dir if out_dir is not None else config.output.dir)
    todo = prepare(out_dir, plan(config, out_dir, only), overwrite, resume, config)
    if pipe is None and todo:
        pipe = load_model(config.model, config.sampler.scheduler, allow_pickle)
    if todo:
        call_kwargs(pipe, config, config.items(), config.sampler.seed)  # refuse bad items before any call
    return [path for job in tqdm(todo, desc="generate", unit="call", disable=not progress)
            for path in make(pipe, config, job)]


def regenerate(image_path: Path, out_dir: Path | None, overwrite: bool = False, progress: bool = True,
               allow_pickle: bool = False) -> Path:
    """Regenerate one image or video from its own metadata (the same call, seed and batch; same machine: same
    pixels)."""
    data, item = read_metadata(Path(image_path))
    config = validate(data, f"{image_path} (metadata)")
    target = Path(out_dir) if out_dir is not None else Path(image_path).parent
    [path] = generate(config, target, overwrite=overwrite, progress=progress, only=(item["index"], item["image"]),
                      allow_pickle=allow_pickle)
    return path
