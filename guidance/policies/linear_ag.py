"""`linear_ag`: LinearAG — replace the reference evaluation by a fitted linear estimate at some steps.

Castillo et al., "Adaptive Guidance: Training-free Acceleration of Conditional Diffusion Models", AAAI 2025
(arXiv 2312.12487), §5: the unconditional prediction is regressed on earlier predictions of the same
trajectory, with per-step scalar coefficients fitted by ordinary least squares on recorded CFG trajectories:
  û_k = β_k,0·c_k + β_k,1·c_{k−1} + β_k,2·u_{k−1}
(c, u: the denoiser's raw conditional and reference outputs; u_{k−1} the previous step's reference, evaluated
or estimated). As in the paper, the first part of the run alternates evaluated and estimated references and
the rest is conditional only (the AG regime). The pattern and the coefficients live in a JSON file written by
`guidance.fit_linear_ag` for one model, scheduler and step count; loading it for another refuses.
Conventions: docs/CONVENTIONS.md §18.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import PrivateAttr, field_validator

from ..errors import GuidanceError, shorten
from ..plan import StepTable
from ..yaml_file import is_file
from .base import Policy

FORMAT = "diffusers-guidance/linear_ag"
REAL, ESTIMATE, CONDITIONAL = "real", "estimate", "conditional"


def step_modes(num_steps: int, guided_fraction: float, real_every: int) -> list[str]:
    """Which steps evaluate the reference, estimate it, or run conditional only."""
    guided = max(1, math.ceil(num_steps * guided_fraction))
    modes = []
    for k in range(num_steps):
        if k >= guided:
            modes.append(CONDITIONAL)
        else:
            modes.append(REAL if k % real_every == 0 else ESTIMATE)
    return modes


def least_squares(regressors: list[torch.Tensor], target: torch.Tensor) -> tuple[list[float], float]:
    """β minimising ‖target − Σ β_j·regressor_j‖² (float64), and the relative residual."""
    x = torch.stack([r.double().flatten() for r in regressors], dim=1)
    y = target.double().flatten()
    beta = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.flatten()
    residual = (y - x @ beta).norm() / y.norm().clamp_min(1e-30)
    return beta.tolist(), float(residual)


def fit(trajectory: list[tuple[torch.Tensor, torch.Tensor]], modes: list[str]) -> list[dict[str, Any]]:
    """Per-step entries {mode, coefficients, residual} from one recorded CFG run [(c_k, u_k), ...]."""
    entries: list[dict[str, Any]] = []
    for k, mode in enumerate(modes):
        if mode != ESTIMATE:
            entries.append({"mode": mode})
            continue
        (c, u), (c_prev, u_prev) = trajectory[k], trajectory[k - 1]
        beta, residual = least_squares([c, c_prev, u_prev], u)
        entries.append({"mode": mode, "coefficients": beta, "residual": residual})
    return entries


def write(path: str | Path, steps: StepTable, entries: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    path = Path(path)
    record = {"format": FORMAT, "version": 1, "sampler": steps.sampler, "num_inference_steps": len(steps),
              "prediction_type": steps.prediction_type, "steps": entries, **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return path


class LinearAG(Policy):
    """Fitted linear estimate of the reference at alternate early steps, conditional only later."""

    name = "linear_ag"
    estimates = True
    paper = "Castillo et al., AAAI 2025 (arXiv 2312.12487)"
    summary = "û_k = β₀c_k + β₁c_{k−1} + β₂u_{k−1} at estimated steps (coefficients from a fitted file)"

    coefficients: str

    _record: dict[str, Any] = PrivateAttr(default_factory=dict)
    _previous: tuple[torch.Tensor, torch.Tensor | None] | None = PrivateAttr(None)

    @field_validator("coefficients")
    @classmethod
    def _exists(cls, value: str) -> str:
        if not is_file(value):
            raise ValueError(
                f"no coefficient file at {shorten(value, 300)}; fit one with guidance.fit_linear_ag(pipe, spec, path, "
                "...) or `guidance fit-linear-ag -c CONFIG --out FILE` for this model, scheduler and step count"
            )
        return value

    def _load(self) -> dict[str, Any]:
        try:
            record = json.loads(Path(self.coefficients).read_text())
        except (OSError, ValueError) as error:
            raise GuidanceError(f"Cannot read the LinearAG coefficient file {self.coefficients!r} ({error}). "
                                "Fit it again with guidance.fit_linear_ag.") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise GuidanceError(f"{self.coefficients!r} is not a LinearAG coefficient file (no format "
                                f"{FORMAT!r}). Fit one with guidance.fit_linear_ag.")
        return record

    def reset(self, batch_size: int, steps: StepTable) -> None:
        record = self._load()
        fitted = (record["sampler"], record["num_inference_steps"], record["prediction_type"])
        wanted = (steps.sampler, len(steps), steps.prediction_type)
        if fitted != wanted:
            raise GuidanceError(
                f"The LinearAG coefficients in {self.coefficients!r} were fitted for sampler "
                f"{fitted[0]!r} with {fitted[1]} steps ({fitted[2]}), but this run uses {wanted[0]!r} with "
                f"{wanted[1]} steps ({wanted[2]}). Fit coefficients for this setting with guidance.fit_linear_ag."
            )
        self._record, self._previous, self._batch_size = record, None, batch_size

    def _mode(self, index: int) -> dict[str, Any]:
        return self._record["steps"][index]

    def reference_samples(self, index: int) -> list[int]:
        return list(range(self._batch_size)) if self._mode(index)["mode"] == REAL else []

    def estimate(self, index: int, c: torch.Tensor) -> torch.Tensor | None:
        entry = self._mode(index)
        if entry["mode"] != ESTIMATE or self._previous is None or self._previous[1] is None:
            return None
        c_prev, u_prev = self._previous
        b0, b1, b2 = entry["coefficients"]
        return b0 * c + b1 * c_prev + b2 * u_prev

    def observe(self, index: int, samples: list[int], c: torch.Tensor, u: torch.Tensor | None,
                cosine: torch.Tensor | None) -> None:
        # copies: a separate-calls pipeline's conditional output is overwritten in place with g once its negative
        # call has run (pipelines/adapters/separate.py), and the estimate needs c_{k−1}, not g_{k−1}
        self._previous = (c.clone(), None if u is None else u.clone())
