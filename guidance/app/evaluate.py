"""The evaluation harness: run guidance settings on a reference model and measure each paper's claim.

Per setting, on the same conditions and initial noise: adherence (class accuracy on the digits models; on the
captioned-scenes text models, every attribute the judge reads back right) and its confidence, Fréchet distance and
k-NN precision/recall in the reader's features against held-out real samples, saturation of the raw samples,
feature diversity, denoiser rows, wall time and the mean effective scale (telemetry.py); what is asked and read per
kind of model is in tasks.py. Writes a markdown and a CSV table, image grids, plots (metric vs scale per method;
per-step telemetry), and the comparison page (index.html) with its data file (evaluation.json).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import GuidanceError
from ..pipelines.api import run
from ..spec import load
from ..telemetry import mean_effective_scale
from .config import EvaluationFile, ModelSection
from .loading import load_model
from .tasks import DigitsTask, ScenesTask, task_for


@dataclass
class Setting:
    """One row of an evaluation: a labelled guidance spec and its sampler settings."""

    name: str
    spec: dict[str, Any]
    steps: int = 25
    eta: float = 0.0
    model: str = "digits"  # a bundled model name (see BUNDLED) or a pipeline folder
    unconditional: bool = False  # the null class / the empty prompt (no accuracy; digits' diversity: predicted classes)
    negative_prompt: str | None = None  # text models: the call's negative prompt (CFG's reference, NAG's negative)
    method: str = ""  # groups settings into one line of the metric-vs-scale plots (default: the rule's name)

    def __post_init__(self) -> None:
        rule = load(self.spec).rule.name  # validates the spec early
        self.method = self.method or rule


def settings_from(loaded: EvaluationFile, source: str, scales: list[float] | None = None) -> list[Setting]:
    """The settings of a validated settings file, one per scale (`scales`: for entries that list none)."""
    settings = []
    for i, entry in enumerate(loaded.settings):
        name = entry.name or (Path(source).stem if len(loaded.settings) == 1 else f"setting {i}")
        common = {"steps": entry.steps or loaded.steps, "eta": entry.eta, "model": entry.model or loaded.model,
                  "method": entry.method or name, "unconditional": entry.unconditional,
                  "negative_prompt": entry.negative_prompt}
        for scale in entry.scales or scales or [None]:
            spec = entry.guidance if scale is None else {**entry.guidance, "scale": scale}
            try:
                settings.append(Setting(name if scale is None else f"{name} w={scale:g}", spec, **common))
            except GuidanceError as error:
                raise GuidanceError(f"In '{source}', settings[{i}] ({name}): {error}") from None
    return settings


def generate(pipe: Any, task: DigitsTask | ScenesTask, setting: Setting, seed: int, batch: int,
             progress: tqdm | None = None) -> tuple[torch.Tensor, dict[str, Any], float]:
    """Raw (unclipped) samples of a setting for the task's conditions, merged stats of all batches, wall time in
    seconds (decoding included); the initial noise depends on the seed only, so every setting starts from it."""
    count = len(task.grid_labels)
    noise = torch.randn((count, *task.latent_shape(pipe)), generator=torch.Generator().manual_seed(seed))
    outputs, rows, steps = [], 0, None
    start = time.perf_counter()
    for first in range(0, count, batch):
        stats: dict[str, Any] = {}
        arguments = task.call_arguments(pipe, setting, slice(first, first + batch))
        latents = run(pipe, setting.spec, stats=stats, **arguments, latents=noise[first:first + batch],
                      num_inference_steps=setting.steps,
                      generator=torch.Generator().manual_seed(seed + first), output_type="latent").images
        outputs.append(task.decode(pipe, latents))
        rows += stats["denoiser_rows"]
        steps = steps or stats["steps"]
        if progress is not None:
            progress.update(len(latents))
    return torch.cat(outputs), {"denoiser_rows": rows, "steps": steps}, time.perf_counter() - start


def evaluate(settings: Sequence[Setting], samples: int = 500, seed: int = 0, batch: int = 250,
             out: Path | None = None, progress: bool = True,
             pipelines: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run every setting on the same conditions and initial noise; return one row of metrics per setting.

    `pipelines` maps model names to loaded pipelines (others are loaded by name or path on first use).
    """
    pipelines = dict(pipelines or {})
    tasks: dict[type, DigitsTask | ScenesTask] = {}
    rows, telemetry, grids, specs = [], {}, {}, {}
    bar = tqdm(total=samples * len(settings), desc="evaluate", unit="sample", disable=not progress)
    for setting in settings:
        bar.set_postfix_str(setting.name)
        if setting.model not in pipelines:
            pipelines[setting.model] = load_model(ModelSection(path=setting.model, device="cpu"))
        pipe = pipelines[setting.model]
        task = task_for(pipe, samples, seed, tasks)
        images, stats, seconds = generate(pipe, task, setting, seed, batch, bar)
        spec = load(setting.spec)
        row = {"setting": setting.name, "method": setting.method, "model": setting.model,
               "scale": spec.scale, "mean_w": mean_effective_scale(stats["steps"], spec.rule.to_spec()),
               "steps": setting.steps, **task.measure(images, setting), "denoiser_rows": stats["denoiser_rows"],
               "rows_per_sample": stats["denoiser_rows"] / samples, "seconds": seconds}
        rows.append(row)
        telemetry[setting.name] = stats["steps"]
        grids[setting.name] = (images, task.grid_labels)
        specs[setting.name] = {"guidance": spec.to_spec(), "model": setting.model, "steps": setting.steps,
                               "eta": setting.eta, "unconditional": setting.unconditional,
                               "negative_prompt": setting.negative_prompt}
    bar.close()
    if out is not None:
        from .report import write_report

        write_report(Path(out), rows, telemetry, grids, list(tasks.values()), specs, samples, seed)
    return rows
