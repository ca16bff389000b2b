"""Evaluation output: markdown and CSV tables, labelled image grids, metric and telemetry plots, and the comparison
page with its data file (evaluation.json, page.py)."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

COLUMNS = ("setting", "scale", "mean_w", "steps", "accuracy", "confidence", "fd", "precision", "recall", "diversity",
           "beyond_range", "mean_abs", "rows_per_sample", "seconds")
PLOTTED = ("accuracy", "fd", "beyond_range", "mean_abs", "precision", "recall", "diversity", "rows_per_sample")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "setting"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table of `rows` (columns: the first row's keys unless given); numbers to 4 significant digits."""
    columns = list(rows[0]) if columns is None else columns
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def image_grid(samples: torch.Tensor, labels: Sequence[int], per_class: int = 8, zoom: int = 4) -> Image.Image:
    """Rows = labels (negative labels are left out), columns = the first `per_class` samples of each; [−1, 1] →
    grey (one channel) or RGB (three), values clipped."""
    labels = np.asarray(labels)
    classes = sorted(label for label in set(labels.tolist()) if label >= 0)
    size, channels = samples.shape[-1], samples.shape[1]
    canvas = np.zeros((len(classes) * size, per_class * size, channels), dtype=np.uint8)
    pixels = ((samples.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for r, label in enumerate(classes):
        for c, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
            canvas[r * size:(r + 1) * size, c * size:(c + 1) * size] = pixels[index]
    image = Image.fromarray(canvas[..., 0] if channels == 1 else canvas, mode="L" if channels == 1 else "RGB")
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)


def plot_metrics(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        methods[row["method"]].append(row)
    figure, axes = plt.subplots(2, 4, figsize=(16, 7))
    markers = "os^vD<>pX*"
    for axis, metric in zip(axes.flat, PLOTTED, strict=True):
        for i, (method, group) in enumerate(methods.items()):
            group = sorted(group, key=lambda r: r["scale"])
            axis.plot([r["scale"] for r in group], [r[metric] for r in group], marker=markers[i % len(markers)],
                      color=plt.cm.tab20.colors[i % 20], label=method)
        if metric == "fd":
            axis.axhline(rows[0]["fd_floor"], color="grey", linestyle=":", label="real vs real")
        axis.set_title(metric)
        axis.set_xlabel("scale")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_telemetry(path: Path, telemetry: dict[str, list[dict[str, Any]]]) -> None:
    """w_t, mean cos(x̂0_c, x̂0_u) and mean ‖x̂0_c − x̂0_u‖ per step, one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4))
    for i, (name, steps) in enumerate(telemetry.items()):
        color = plt.cm.tab20.colors[i % 20]
        axes[0].plot([s["step"] for s in steps], [s["w"] for s in steps], color=color, label=name)
        for axis, key in zip(axes[1:], ("cosine", "delta_norm"), strict=True):
            points = [(s["step"], float(np.mean(s[key]))) for s in steps if s[key]]
            if points:
                axis.plot(*zip(*points, strict=True), marker=".", color=color)
    for axis, title in zip(axes, ("w_t", "cos(x̂0_c, x̂0_u), mean over samples", "‖x̂0_c − x̂0_u‖, mean"),
                           strict=True):
        axis.set_title(title)
        axis.set_xlabel("step")
    figure.legend(loc="center right", fontsize=8)
    figure.tight_layout(rect=(0, 0, 0.85, 1))
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _page_data(rows: list[dict[str, Any]], telemetry: dict[str, list[dict[str, Any]]], specs: dict[str, Any],
               samples: int, seed: int) -> dict[str, Any]:
    """evaluation.json: per setting its differing settings, its image grid, time and rows per sample, mean effective
    scale and per-step telemetry; the metrics table and what the metric plots show."""
    from .page import differing, number, summary

    settings = differing([specs[row["setting"]] for row in rows], None)
    cells = [{"cell": row["setting"], "settings": changed, "method": row["method"], "mean_w": number(row["mean_w"]),
              "telemetry": summary([telemetry[row["setting"]]], specs[row["setting"]]["guidance"]["rule"]),
              "media": [{"src": f"grids/{slug(row['setting'])}.png", "seed": seed, "image": 0, "video": False,
                         "item": "every class, or the first 64 prompts",
                         "column": "samples (a row per class, or per 8 prompts)",
                         "seconds": number(row["seconds"] / samples),
                         "denoiser_rows": number(row["rows_per_sample"]), "mean_w": number(row["mean_w"])}]}
             for row, changed in zip(rows, settings, strict=True)]
    table = [{key: number(value) if isinstance(value, float) else value for key, value in row.items()} for row in rows]
    metrics = {"columns": ["method", *COLUMNS], "plotted": list(PLOTTED), "rows": table}
    return {"kind": "evaluation", "samples": samples, "seed": seed, "cells": cells, "metrics": metrics}


def write_report(out: Path, rows: list[dict[str, Any]], telemetry: dict[str, list[dict[str, Any]]],
                 grids: dict[str, tuple[torch.Tensor, Sequence[int]]], tasks: Sequence[Any], specs: dict[str, Any],
                 samples: int, seed: int) -> None:
    """results.md / results.csv, grids/<setting>.png, plots/metrics.png, plots/telemetry-<method>.png, and
    evaluation.json with the page that shows it (index.html); `grids`: each setting's samples and grid rows,
    `tasks`: the evaluation's tasks (their real-vs-real floors end the table), `specs`: each setting's guidance and
    sampler."""
    from .media import atomic_write
    from .page import write_page

    (out / "grids").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows)
    floors = [{"setting": task.floor_label, "fd": task.reference.floor, "precision": task.reference.floor_precision,
               "recall": task.reference.floor_recall} for task in tasks]
    (out / "results.md").write_text(markdown_table([*rows, *floors], COLUMNS))
    for name, (images, labels) in grids.items():
        image_grid(images, labels).save(out / "grids" / f"{slug(name)}.png")
    plot_metrics(out / "plots" / "metrics.png", rows)
    for method in dict.fromkeys(row["method"] for row in rows):
        names = [row["setting"] for row in rows if row["method"] == method]
        plot_telemetry(out / "plots" / f"telemetry-{slug(method)}.png", {n: telemetry[n] for n in names})
    text = json.dumps(_page_data(rows, telemetry, specs, samples, seed), indent=1)
    atomic_write(out / "evaluation.json", lambda path: Path(path).write_text(text))
    write_page(out, "evaluation.json")
