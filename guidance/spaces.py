"""Conversions between a denoiser's prediction and the denoised estimate x̂0.

The model input is x_t = a·x0 + s·n (VP: a = sqrt(ᾱ), s = sqrt(1 − ᾱ); rectified flow: a = 1 − σ, s = σ).
Prediction types: "epsilon" (n), "v_prediction" (VP velocity a·n − s·x0), "flow" (n − x0), "sample" (x0).
All arithmetic runs in float32 (or the input's wider dtype) and is cast back to the prediction's dtype.
"""

from __future__ import annotations

import torch

_TINY = 1e-12


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def to_x0(out: torch.Tensor, x: torch.Tensor, a: float, s: float, prediction_type: str) -> torch.Tensor:
    """x̂0 from the model output `out` at input `x` (float32)."""
    out, x = _wide(out), _wide(x)
    if prediction_type == "epsilon":
        return (x - s * out) / max(a, _TINY)
    if prediction_type == "v_prediction":
        return a * x - s * out
    if prediction_type == "flow":
        return x - s * out
    if prediction_type == "sample":
        return out
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def from_x0(x0: torch.Tensor, x: torch.Tensor, a: float, s: float, prediction_type: str) -> torch.Tensor:
    """The model output that corresponds to the estimate `x0` at input `x` (float32)."""
    x0, x = _wide(x0), _wide(x)
    if prediction_type == "epsilon":
        return (x - a * x0) / max(s, _TINY)
    if prediction_type == "v_prediction":
        return (a * x - x0) / max(s, _TINY)
    if prediction_type == "flow":
        return (x - x0) / max(s, _TINY)
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def noise_gain(a: float, s: float, prediction_type: str) -> float:
    """k with n̂(out₁) − n̂(out₂) = k·(out₁ − out₂): how a change of output moves the noise estimate."""
    if prediction_type == "epsilon":
        return 1.0
    if prediction_type in ("v_prediction", "flow"):
        return a
    if prediction_type == "sample":
        return -a / max(s, _TINY)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def per_sample_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """⟨x_b, y_b⟩ over all non-batch dims, float32, shape (B, 1, …, 1)."""
    dims = tuple(range(1, x.ndim))
    return (_wide(x) * _wide(y)).sum(dim=dims, keepdim=True)


def per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x_b‖ over all non-batch dims, float32, shape (B, 1, …, 1)."""
    return per_sample_dot(x, x).sqrt()


def per_sample_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cos(x_b, y_b) over all non-batch dims, float32, shape (B,)."""
    dot = per_sample_dot(x, y).flatten()
    norms = (per_sample_norm(x) * per_sample_norm(y)).flatten()
    return dot / norms.clamp_min(1e-20)
