"""Evaluation metrics against closed forms and an independent implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from guidance.app.metrics import class_diversity, frechet_distance, knn_precision_recall, saturation
from guidance.errors import GuidanceError


def test_frechet_distance_matches_scipy_sqrtm_formula() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(loc=0.3, size=(300, 6)) @ rng.normal(size=(6, 6))
    mu_a, mu_b, cov_a, cov_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_gaussians_approaches_closed_form() -> None:
    """N(0, I) vs N(m, 4I) in d dims: ‖m‖² + d·(1 + 4 − 2·2) = ‖m‖² + d."""
    rng = np.random.default_rng(1)
    d, m = 4, np.array([1.0, 0.0, 0.0, 2.0])
    a, b = rng.normal(size=(200_000, d)), m + 2 * rng.normal(size=(200_000, d))
    assert frechet_distance(a, b) == pytest.approx(5.0 + d, rel=0.01)


def test_precision_recall_of_disjoint_and_identical_sets() -> None:
    rng = np.random.default_rng(2)
    real = rng.normal(size=(300, 3))
    assert knn_precision_recall(real, real.copy()) == (1.0, 1.0)
    precision, recall = knn_precision_recall(real, real + 100.0)
    assert precision == 0.0 and recall == 0.0
    collapsed = np.repeat(real[:1], 300, axis=0) + 1e-3 * rng.normal(size=(300, 3))  # mode collapse
    precision, recall = knn_precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.05


def test_class_diversity_is_mean_within_class_distance() -> None:
    features = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 10.0], [10.0, 12.0], [10.0, 14.0]])
    labels = np.array([0, 0, 1, 1, 1])
    assert class_diversity(features, labels) == pytest.approx((5.0 + (2 + 4 + 2) / 3) / 2)


def test_saturation_counts_values_beyond_the_range() -> None:
    samples = np.array([-1.0, -1.3, 0.2, 1.0, 1.25, 0.9, -0.5, 3.0])
    result = saturation(samples)
    assert result["beyond_range"] == pytest.approx(3 / 8)
    assert result["at_range"] == pytest.approx(5 / 8)
    assert result["max_abs"] == 3.0 and result["mean_abs"] == pytest.approx(np.abs(samples).mean())


@pytest.mark.parametrize(("metric", "few"), [(frechet_distance, 1), (knn_precision_recall, 3)])
def test_metrics_refuse_too_few_samples_with_a_clear_message(metric, few) -> None:
    rng = np.random.default_rng(4)
    with pytest.raises(GuidanceError, match="at least"):
        metric(rng.normal(size=(50, 4)), rng.normal(size=(few, 4)))
    with pytest.raises(GuidanceError, match="at least"):
        metric(rng.normal(size=(50, 4)), np.zeros((0, 4)))


def test_metrics_of_diverged_samples_are_nan_not_an_error() -> None:
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    fake[3, 1] = np.nan
    assert np.isnan(frechet_distance(real, fake))
    assert all(np.isnan(v) for v in knn_precision_recall(real, fake))
    assert np.isnan(class_diversity(rng.normal(size=(3, 2)), np.array([0, 1, 2])))  # no class with two samples
