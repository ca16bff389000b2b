"""The analytic Gaussian mixture: an exact oracle for guided sampling.

CFG at w = 1 with enough DDIM steps samples p(x | c) (a two-sample test against exact samples); DDIM-CFG at
w > 1 does not sample the tilted density p(x | c)^w · p(x)^(1 − w) (Bradley & Nakkiran, arXiv 2408.09000).
"""

from __future__ import annotations

import pytest
import torch

import guidance
from guidance.pipelines.gmm import gmm_pipeline, three_class, two_class_2d


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Unbiased squared MMD with a Gaussian kernel."""
    def kernel(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth**2))
    n, m = len(x), len(y)
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * kxy.mean())


def permutation_p_value(x: torch.Tensor, y: torch.Tensor, bandwidth: float, permutations: int = 100) -> float:
    observed = mmd2(x, y, bandwidth)
    pooled = torch.cat([x, y])
    generator = torch.Generator().manual_seed(0)
    exceed = 0
    for _ in range(permutations):
        order = torch.randperm(len(pooled), generator=generator)
        exceed += int(mmd2(pooled[order[:len(x)]], pooled[order[len(x):]], bandwidth) >= observed)
    return (exceed + 1) / (permutations + 1)


def sample(pipe, label: int, n: int, scale: float, steps: int) -> torch.Tensor:
    out = guidance.run(pipe, {"scale": scale}, class_labels=[label] * n, num_inference_steps=steps,
                       generator=torch.Generator().manual_seed(1), output_type="latent")
    return out.images.double()


def tilted_samples(model, label: int, w: float, n: int) -> torch.Tensor:
    """Exact samples of p(x | c)^w · p(x)^(1 − w) in 2-D by sampling a fine grid (cell 0.02) and jittering."""
    edge = torch.linspace(-4, 4, 401, dtype=torch.float64)
    cell = float(edge[1] - edge[0])
    grid = torch.stack(torch.meshgrid(edge, edge, indexing="ij"), -1).reshape(-1, 2)
    log_density = w * model.log_density(grid, label) + (1 - w) * model.log_density(grid, model.null_class)
    generator = torch.Generator().manual_seed(7)
    index = torch.multinomial(torch.softmax(log_density, 0), n, replacement=True, generator=generator)
    return grid[index] + (torch.rand((n, 2), generator=generator, dtype=torch.float64) - 0.5) * cell


def test_denoiser_is_exact_posterior_mean_at_low_noise() -> None:
    model = two_class_2d()
    x = model.sample_exact(0, 5, torch.Generator().manual_seed(0))
    assert torch.allclose(model.denoise(x, torch.tensor(0), torch.zeros(5, dtype=torch.long)), x, atol=1e-3)


@pytest.mark.parametrize("label", [0, 1])
def test_cfg_at_w1_samples_the_conditional(label: int) -> None:
    model = two_class_2d()
    pipe = gmm_pipeline(model)
    generated = sample(pipe, label, 1000, 1.0, 100)
    exact = model.sample_exact(label, 1000, torch.Generator().manual_seed(2))
    assert permutation_p_value(generated, exact, bandwidth=0.3) > 0.01
    other = model.sample_exact(1 - label, 1000, torch.Generator().manual_seed(3))
    assert permutation_p_value(generated, other, bandwidth=0.3) < 0.02  # the test has power


def test_cfg_at_w1_samples_the_conditional_in_16_dimensions() -> None:
    model = three_class(dim=16)
    pipe = gmm_pipeline(model)
    generated = sample(pipe, 2, 800, 1.0, 100)
    exact = model.sample_exact(2, 800, torch.Generator().manual_seed(2))
    assert permutation_p_value(generated, exact, bandwidth=1.0) > 0.01
    assert torch.allclose(generated.mean(0), exact.mean(0), atol=0.08)


def test_ddim_cfg_at_w5_does_not_sample_the_tilted_density() -> None:
    model = two_class_2d()
    pipe = gmm_pipeline(model)
    generated = sample(pipe, 0, 1000, 5.0, 100)
    tilted = tilted_samples(model, 0, 5.0, 1000)
    assert permutation_p_value(generated, tilted, bandwidth=0.3) < 0.02
    control = tilted_samples(model, 0, 5.0, 2000)[1000:]  # the grid sampler agrees with itself
    assert permutation_p_value(tilted, control, bandwidth=0.3) > 0.01
