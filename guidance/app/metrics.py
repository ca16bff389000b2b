"""Sample-quality metrics on feature vectors and raw samples (float64 numpy; no model code here). Each refuses
sample counts it cannot handle with a GuidanceError; features that are not finite (a run that diverged) give NaN.
"""

from __future__ import annotations

import numpy as np

from ..errors import GuidanceError


def _enough(name: str, needed: int, *sets: np.ndarray) -> bool:
    """Refuse fewer than `needed` samples in any set; False when a set holds non-finite values (the metric is NaN)."""
    for values in sets:
        if len(values) < needed:
            raise GuidanceError(f"{name} needs at least {needed} samples per set, got {len(values)}. Evaluate more "
                                "samples (--samples or `samples:` in the settings file).")
    return all(np.isfinite(values).all() for values in sets)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^{1/2}) between two feature sets (N, D)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not _enough("The Fréchet distance", 2, a, b):
        return float("nan")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(squared, 0, None))


def _radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour within the set (itself excluded)."""
    return np.sort(_distances(points, points), axis=1)[:, k]


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019): the share of generated samples inside
    the real manifold (k-NN balls around real samples), and of real samples inside the generated one."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if not _enough("k-NN precision and recall", k + 1, real, fake):
        return float("nan"), float("nan")
    precision = (_distances(fake, real) <= _radii(real, k)[None, :]).any(1).mean()
    recall = (_distances(real, fake) <= _radii(fake, k)[None, :]).any(1).mean()
    return float(precision), float(recall)


def class_diversity(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean pairwise feature distance within each class, averaged over the classes with two or more samples (NaN when
    none has)."""
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    per_class = []
    for label in np.unique(labels):
        group = features[labels == label]
        if len(group) > 1:
            d = _distances(group, group)
            per_class.append(d.sum() / (len(group) * (len(group) - 1)))
    return float(np.mean(per_class)) if per_class else float("nan")


def saturation(samples: np.ndarray, limit: float = 1.0, margin: float = 0.2) -> dict[str, float]:
    """Raw (unclipped) samples against the data range [−limit, limit]: the share of values beyond it by more than
    `margin`, the share at or beyond it, and the mean and max absolute value."""
    values = np.abs(np.asarray(samples, dtype=np.float64))
    return {"beyond_range": float((values > limit + margin).mean()), "at_range": float((values >= limit).mean()),
            "mean_abs": float(values.mean()), "max_abs": float(values.max())}
