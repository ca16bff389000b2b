"""`guidance sweep`: a grid over any config fields × seeds — one folder of images per cell, a labelled image
grid, a data file (sweep.json) and the comparison page that shows it (index.html, page.py). Resumable: images
already made from the same cell config, with the record of their call (wall time, denoiser rows, telemetry), are
kept, not redone.

Distributed: under `accelerate launch` or `torchrun`, each process makes every N-th pending pipeline call of one
global, ordered list (a call's images share one generator, so it is the unit of work) with the seed of the
single-process run, then the main process writes the grid and the table from the shared output folder."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..errors import GuidanceError, shorten
from ..telemetry import mean_effective_scale
from .config import MAX_SEED, RunConfig, parse_value, set_path, validate
from .generate import Job, call_kwargs, make, plan, prepare
from .loading import load_model
from .media import atomic_write
from .page import differing, mean, number, summary, write_page
from .report import slug

T = TypeVar("T")
WAIT_LIMIT = timedelta(hours=6)  # how long a process that finished its share waits for the others


def parse_grid(entries: list[str]) -> list[tuple[str, list[Any]]]:
    """--grid key.path=v1,v2,... entries as (key path, values)."""
    axes = []
    for entry in entries:
        key, sep, text = entry.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise GuidanceError(f"--grid {shorten(entry)}: write key.path=v1,v2,..., e.g. --grid "
                                "guidance.scale=1,3,7.5.")
        values = [parse_value(v) for v in text.split(",")] if not text.strip().startswith("[") else parse_value(text)
        axes.append((key.strip(), list(values)))
    return axes


MAX_SEEDS = 10_000


def parse_seeds(text: str) -> list[int]:
    """'0-3' → [0, 1, 2, 3]; '0,5,7' → [0, 5, 7]; seeds from 0 to 2^62, at most MAX_SEEDS of them."""
    try:
        bounds = [(int(low), int(high) if high else int(low)) for low, _, high in
                  (part.partition("-") for part in text.split(","))]
    except ValueError:
        raise GuidanceError(f"--seeds {shorten(text)}: write a range like 0-3 or a list like 0,5,7.") from None
    if any(low < 0 or high > MAX_SEED for low, high in bounds):
        raise GuidanceError(f"--seeds {shorten(text)}: seeds are integers from 0 to 2^62.")
    if sum(max(0, high - low + 1) for low, high in bounds) > MAX_SEEDS:
        raise GuidanceError(f"--seeds {shorten(text)}: at most {MAX_SEEDS} seeds per sweep.")
    seeds = [seed for low, high in bounds for seed in range(low, high + 1)]
    if not seeds:
        raise GuidanceError(f"--seeds {shorten(text)}: no seed in it; write a range like 0-3 or a list like 0,5,7.")
    return seeds


def cells(data: dict[str, Any], axes: list[tuple[str, list[Any]]], source: str) -> list[tuple[str, RunConfig]]:
    """(label, validated config) for every combination of the grid's values."""
    out = []
    for combination in itertools.product(*(values for _, values in axes)):
        cell = data
        for (key, _), value in zip(axes, combination, strict=True):
            cell = set_path(cell, key, value)
        label = ", ".join(f"{key}={value}" for (key, _), value in zip(axes, combination, strict=True)) or "config"
        out.append((label, validate(cell, f"{source} [{label}]")))
    return out


def _labelled_grid(rows: list[tuple[str, list[Path]]], columns: list[str]) -> Image.Image:
    images = [[Image.open(p).convert("RGB") for p in paths] for _, paths in rows]
    size = max(max(im.width, im.height) for row in images for im in row)
    cell = max(size, 48)
    left, top = 260, 20
    canvas = Image.new("RGB", (left + cell * len(columns), top + cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(columns):
        draw.text((left + c * cell + 2, 4), label, fill="black")
    for r, ((label, _), row) in enumerate(zip(rows, images, strict=True)):
        draw.text((4, top + r * cell + cell // 2 - 6), label[:42], fill="black")
        for c, image in enumerate(row):
            scale = max(1, cell // max(image.width, image.height))
            canvas.paste(image.resize((image.width * scale, image.height * scale), Image.NEAREST),
                         (left + c * cell, top + r * cell))
    return canvas


@dataclass(frozen=True)
class Run:
    """One grid cell at one seed: its row in the grid, its seeded config and its image folder."""

    cell: int
    config: RunConfig
    folder: Path


@dataclass(frozen=True)
class Task:
    """One pipeline call of a sweep, the unit of work that processes share out."""

    run: Run
    job: Job


def runs(planned: list[tuple[str, RunConfig]], seeds: list[int], out_dir: Path) -> list[Run]:
    """Every cell × seed, cells in grid order, seeds in the given order."""
    return [Run(cell, config.model_copy(update={"sampler": config.sampler.model_copy(update={"seed": seed})}),
                out_dir / slug(label) / f"seed-{seed}")
            for cell, (label, config) in enumerate(planned) for seed in seeds]


def record_path(task: Task) -> Path:
    """Where a call's record is kept, beside its images: the digest of its config, its wall time (the pipeline call
    and writing its files), its denoiser rows and per-step telemetry."""
    return task.run.folder / f"{task.run.config.output.prefix}-{task.job.index:03d}.json"


def _digest(config: RunConfig) -> str:
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def read_record(task: Task) -> dict[str, Any] | None:
    """The call's record if it was written for this very config (None otherwise)."""
    try:
        record = json.loads(record_path(task).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("config") == _digest(task.run.config) else None


def pending(all_runs: list[Run], overwrite: bool) -> list[Task]:
    """The calls still to make, in one global order, after every overwrite and folder check (before any work): a
    call is done when its images are made from its config and its record is on disk (written last)."""
    tasks = []
    for run in all_runs:
        jobs = plan(run.config, run.folder)
        todo = prepare(run.folder, jobs, overwrite, True, run.config)
        tasks += [task for task in (Task(run, job) for job in jobs) if task.job in todo or read_record(task) is None]
    return tasks


def share(items: Sequence[T], index: int, count: int) -> list[T]:
    """Process `index` of `count` takes items index, index + count, ...: each item goes to exactly one process."""
    return list(items[index::count])


def check(data: dict[str, Any], axes: list[tuple[str, list[Any]]], seeds: list[int], out_dir: Path,
          source: str = "<config>", overwrite: bool = False) -> None:
    """Validate every cell and check every target as the sweep will, without loading any model."""
    pending(runs(cells(data, axes, source), seeds, out_dir), overwrite)


def _process_state() -> Any:
    """accelerate's view of this process: its index, the number of processes, its device."""
    try:
        from accelerate import PartialState
    except ImportError:
        raise GuidanceError("guidance sweep needs Hugging Face accelerate, which is not installed. Install it with "
                            "pip install 'accelerate>=1.7' (a dependency of diffusers-guidance).") from None
    return PartialState(cpu=not torch.cuda.is_available(), timeout=WAIT_LIMIT)


def _together(state: Any, step: Callable[[], T]) -> T | None:
    """Run `step` on every process and wait for all of them. A GuidanceError on any process (config, overwrite,
    model: mostly the same on every one) is raised once, by the main process; the others get None and stop quietly
    (exiting first with a failure would make the launcher stop the main process before it reports)."""
    from accelerate.utils import gather_object

    try:
        result, error = step(), ""
    except GuidanceError as failure:
        result, error = None, str(failure)
    errors = list(dict.fromkeys(e for e in gather_object([error]) if e))
    if errors and state.is_main_process:
        raise GuidanceError("\n".join(errors))
    return None if errors else result


def _pipeline(cache: dict[str, Any], config: RunConfig, state: Any, allow_pickle: bool) -> Any:
    """The (cached) pipeline of a config; with several processes, device `auto` means this process's own GPU."""
    section = config.model
    if section.device == "auto" and state.num_processes > 1 and state.device.type == "cuda":
        section = section.model_copy(update={"device": str(state.device)})
    key = json.dumps(section.model_dump(), sort_keys=True) + config.sampler.scheduler
    if key not in cache:
        cache[key] = load_model(section, config.sampler.scheduler, allow_pickle)
    return cache[key]


def _share_with_pipelines(tasks: list[Task], state: Any, allow_pickle: bool) -> list[tuple[Any, Task]]:
    """This process's share of the tasks, each with its pipeline (loaded once per model and scheduler)."""
    cache: dict[str, Any] = {}
    shared = [(_pipeline(cache, task.run.config, state, allow_pickle), task)
              for task in share(tasks, state.process_index, state.num_processes)]
    for pipe, task in shared:  # refuse bad items (a label the model lacks, prompts for a class model) before any call
        call_kwargs(pipe, task.run.config, task.run.config.items(), task.run.config.sampler.seed)
    return shared


def _work(calls: list[tuple[Any, Task]], state: Any, progress: bool) -> None:
    """Make this process's calls; only the main process shows a progress bar."""
    label = "sweep" if state.num_processes == 1 else f"sweep (process 1 of {state.num_processes})"
    for pipe, task in tqdm(calls, desc=label, unit="call", disable=not (progress and state.is_main_process)):
        stats: dict[str, Any] = {}
        start = time.perf_counter()
        make(pipe, task.run.config, task.job, stats)
        text = json.dumps({"config": _digest(task.run.config), "seconds": time.perf_counter() - start,
                           "denoiser_rows": stats["denoiser_rows"], "steps": stats["steps"]})
        atomic_write(record_path(task), lambda path, text=text: Path(path).write_text(text))


def _base(data: dict[str, Any], source: str) -> dict[str, Any] | None:
    """The resolved base config the grid varies (None when only the grid's values make it valid)."""
    try:
        return validate(data, source).model_dump(mode="json")
    except GuidanceError:
        return None


def _page_cells(planned: list[tuple[str, RunConfig]], all_runs: list[Run], base: dict[str, Any] | None,
                out_dir: Path) -> list[dict[str, Any]]:
    """Per cell, what the page shows: its differing settings, each image with its seed, item, wall time and
    denoiser rows (its call's, shared by its `batch` images), the mean effective scale, and per-step telemetry."""
    settings = differing([config.model_dump(mode="json") for _, config in planned], base)
    out = []
    for cell, (_, config) in enumerate(planned):
        media, calls, rule = [], [], config.guidance.rule.to_spec()
        for run in (run for run in all_runs if run.cell == cell):
            for job in plan(run.config, run.folder):
                record = read_record(Task(run, job)) or {}
                steps, share_of = record.get("steps") or [], 1 / len(job.targets)
                calls.append(steps)
                mean_w = mean_effective_scale(steps, rule) if steps else None
                for position, path in enumerate(job.targets):
                    media.append({"src": path.relative_to(out_dir).as_posix(), "seed": run.config.sampler.seed,
                                  "item": job.item, "image": position, "video": path.suffix == ".webp",
                                  "seconds": number(record["seconds"] * share_of) if record else None,
                                  "denoiser_rows": number(record["denoiser_rows"] * share_of) if record else None,
                                  "mean_w": number(mean_w)})
        telemetry = summary(calls, rule)
        method = ", ".join(f"{k}={v}" for k, v in settings[cell].items() if k != "guidance.scale") or "base config"
        out.append({"settings": settings[cell], "method": method, "telemetry": telemetry, "media": media,
                    "mean_w": number(mean([m["mean_w"] for m in media]))})
    return out


def _write_results(planned: list[tuple[str, RunConfig]], all_runs: list[Run], axes: list[tuple[str, list[Any]]],
                   seeds: list[int], out_dir: Path, base: dict[str, Any] | None) -> Path:
    """grid.png (a row per cell, a column per seed and image), sweep.json (the data, also what the page shows) and
    index.html (the page); returns the grid's path."""
    files = [[f for run in all_runs if run.cell == cell for job in plan(run.config, run.folder) for f in job.targets]
             for cell in range(len(planned))]
    missing = [str(f) for row in files for f in row if not f.is_file()]
    if missing:
        raise GuidanceError(f"{len(missing)} images of the sweep are missing after every process finished, e.g. "
                            f"{missing[0]}. On several machines, --out must be a folder that all of them share "
                            "(e.g. on NFS); run the sweep again to make the missing ones.")
    rows = [(label, row) for (label, _), row in zip(planned, files, strict=True)]
    per_seed = len(files[0]) // len(seeds)
    columns = [f"seed {s}" + (f" #{i}" if per_seed > 1 else "") for s in seeds for i in range(per_seed)]
    table = [{"cell": label, "folder": str(out_dir / slug(label)), "images": [str(f) for f in row], **page}
             for (label, row), page in zip(rows, _page_cells(planned, all_runs, base, out_dir), strict=True)]
    grid = out_dir / "grid.png"
    atomic_write(grid, lambda path: _labelled_grid(rows, columns).save(path, format="PNG"))
    atomic_write(out_dir / "sweep.json", lambda path: Path(path).write_text(json.dumps(
        {"kind": "sweep", "grid": [{"key": k, "values": v} for k, v in axes], "seeds": seeds, "base": base,
         "cells": table}, indent=1)))
    write_page(out_dir, "sweep.json")
    return grid


def sweep(data: dict[str, Any], axes: list[tuple[str, list[Any]]], seeds: list[int], out_dir: Path,
          source: str = "<config>", overwrite: bool = False, progress: bool = True, allow_pickle: bool = False
          ) -> Path | None:
    """Generate every cell × seed into out_dir/<cell>/seed-<s>/, then grid.png and sweep.json; returns grid.png.
    Under a distributed launcher every process makes its share; only the main process returns the grid's path."""
    state = _process_state()

    def prepare_share() -> tuple[list[tuple[str, RunConfig]], list[Run], list[tuple[Any, Task]]]:
        planned = cells(data, axes, source)
        all_runs = runs(planned, seeds, out_dir)
        return planned, all_runs, _share_with_pipelines(pending(all_runs, overwrite), state, allow_pickle)

    try:
        prepared = _together(state, prepare_share)  # every process lists the pending calls before any is made
        if prepared is None:
            return None
        planned, all_runs, calls = prepared
        _work(calls, state, progress)
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
        return _write_results(planned, all_runs, axes, seeds, out_dir, _base(data, source))
    finally:  # a process group left to the interpreter's exit can abort the process ("terminate called …")
        if state.num_processes > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@contextmanager
def _launcher_kept_in_bounds() -> Iterator[None]:
    """Hide torchrun's log of a failed process (which reports its own error) and give back the signal handlers
    torchrun installs, so that launching leaves this process as it found it."""
    elastic = logging.getLogger("torch.distributed.elastic")
    level = elastic.level
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    elastic.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        elastic.setLevel(level)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


def launch(num_processes: int, argv: list[str]) -> int:
    """Run `python -m guidance <argv>` in num_processes processes on this machine under accelerate's launcher
    (torchrun underneath; gloo on CPU, NCCL and one GPU per process on CUDA); returns the first failure's status."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args([
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1", "--main_process_port", "0",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "guidance", *argv])
    with _launcher_kept_in_bounds():
        try:
            launch_command(args)
        except ChildFailedError as error:  # the main process's status first: it reports the errors
            codes = {rank: failure.exitcode for rank, failure in error.failures.items()}
            return codes[0] if codes.get(0, 0) > 0 else next((c for c in codes.values() if c > 0), 1)
        except SignalException as stop:  # Ctrl-C or kill: the processes are stopped, finished images are kept
            return 128 + stop.sigval
    return 0


def require_launcher(num_processes: int) -> None:
    """Refuse a process count below 1, or a launch without accelerate, before anything else is done."""
    if num_processes < 1:
        raise GuidanceError(f"--num-processes {num_processes}: give 1 or more processes (1 runs in this process).")
    try:
        import accelerate.commands.launch  # noqa: F401
    except ImportError:
        raise GuidanceError("--num-processes needs Hugging Face accelerate, which is not installed. Install it with "
                            "pip install 'accelerate>=1.7' (a dependency of diffusers-guidance), or drop "
                            "--num-processes to run in this process.") from None
