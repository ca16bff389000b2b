"""`guidance sweep`: a grid over any config fields × seeds — one folder of images per cell, a labelled image
grid and a table. Resumable: images already made from the same cell config are kept, not redone."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from guidance.config import RunConfig, parse_value, set_path, validate
from guidance.errors import GuidanceError

from .generate import atomic_write, generate, plan
from .loading import load_model, set_scheduler
from .report import slug


def parse_grid(entries: list[str]) -> list[tuple[str, list[Any]]]:
    """--grid key.path=v1,v2,... entries as (key path, values)."""
    axes = []
    for entry in entries:
        key, sep, text = entry.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise GuidanceError(f"--grid {entry!r}: write key.path=v1,v2,..., e.g. --grid guidance.scale=1,3,7.5.")
        values = [parse_value(v) for v in text.split(",")] if not text.strip().startswith("[") else parse_value(text)
        axes.append((key.strip(), list(values)))
    return axes


def parse_seeds(text: str) -> list[int]:
    """'0-3' → [0, 1, 2, 3]; '0,5,7' → [0, 5, 7]."""
    try:
        seeds: list[int] = []
        for part in text.split(","):
            low, _, high = part.partition("-")
            seeds += list(range(int(low), int(high) + 1)) if high else [int(low)]
    except ValueError:
        raise GuidanceError(f"--seeds {text!r}: write a range like 0-3 or a list like 0,5,7.") from None
    if not seeds or min(seeds) < 0:
        raise GuidanceError(f"--seeds {text!r}: seeds are non-negative integers.")
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


def sweep(data: dict[str, Any], axes: list[tuple[str, list[Any]]], seeds: list[int], out_dir: Path,
          source: str = "<config>", overwrite: bool = False, progress: bool = True) -> Path:
    """Generate every cell × seed into out_dir/<cell>/seed-<s>/, then grid.png and sweep.json; returns grid.png."""
    planned = cells(data, axes, source)
    pipelines: dict[str, Any] = {}
    rows, table = [], []
    for label, config in planned:
        files: list[Path] = []
        for seed in seeds:
            seeded = config.model_copy(update={"sampler": config.sampler.model_copy(update={"seed": seed})})
            folder = out_dir / slug(label) / f"seed-{seed}"
            key = json.dumps(config.model.model_dump(), sort_keys=True) + config.sampler.scheduler
            if key not in pipelines:
                pipelines[key] = set_scheduler(load_model(config.model), config.sampler.scheduler)
            generate(seeded, folder, overwrite=overwrite, resume=True, progress=progress, pipe=pipelines[key])
            files += [f for job in plan(seeded, folder) for f in job.targets]
        rows.append((label, files))
        table.append({"cell": label, "folder": str(out_dir / slug(label)), "images": [str(f) for f in files]})
    per_seed = len(rows[0][1]) // len(seeds)
    columns = [f"seed {s}" + (f" #{i}" if per_seed > 1 else "") for s in seeds for i in range(per_seed)]
    grid = out_dir / "grid.png"
    atomic_write(grid, lambda path: _labelled_grid(rows, columns).save(path, format="PNG"))
    atomic_write(out_dir / "sweep.json", lambda path: Path(path).write_text(json.dumps(
        {"grid": [{"key": k, "values": v} for k, v in axes], "seeds": seeds, "cells": table}, indent=1)))
    return grid

