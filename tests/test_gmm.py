"""The analytic Gaussian mixture: an exact oracle for guided sampling.

CFG at w = 1 with enough DDIM steps samples p(x | c) (a two-sample test against exact samples); DDIM-CFG at
w > 1 does not sample the tilted density p(x | c)^w · p(x)^(1 − w) (Bradley & Nakkiran, arXiv 2408.09000).

Guided runs at w = 3 and w = 5 are checked per sample against an exact-score loop written here, independent of
the model's code: from the mixture's parameters, the noisy marginals N(a·μ_k, (a²σ_k² + s²) I) give
log p_t(x | c) and log p_t(x), autograd gives their scores in float64, ε = −s·∇ log p_t, ε̂ = ε_u + w(ε_c − ε_u),
and deterministic DDIM steps on the scheduler's own timesteps and ᾱ. The plugin's final samples (from the same
initial latents) must equal the loop's to 1e-5, and must differ clearly from the w = 1 run, with a higher mean
log p(x | c) − log p(x | other class).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

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


# two_class_2d() written out again, so that the exact-score loop below shares no code with the model.
MEANS = [[-1.0, 0.0], [-0.5, 1.0], [1.0, 0.0], [0.5, -1.0]]
STDS = [0.4, 0.3, 0.4, 0.3]
WEIGHTS = [0.3, 0.2, 0.3, 0.2]
CLASSES = [0, 0, 1, 1]


def exact_noisy_log_density(x: torch.Tensor, alpha_bar: torch.Tensor, components: list[int]) -> torch.Tensor:
    """log Σ_k π_k N(x; a·μ_k, (a²σ_k² + s²) I) over `components` (a² = ᾱ, s² = 1 − ᾱ), float64; the weights are
    not renormalised within a class (a constant: the score is unchanged)."""
    mu = torch.tensor(MEANS, dtype=torch.float64)[components]
    var = torch.tensor(STDS, dtype=torch.float64)[components] ** 2
    log_pi = torch.tensor(WEIGHTS, dtype=torch.float64)[components].log()
    noisy_var = alpha_bar * var + (1 - alpha_bar)
    distance = ((x.unsqueeze(1) - alpha_bar.sqrt() * mu) ** 2).sum(-1)
    log_normal = -0.5 * distance / noisy_var - 0.5 * x.shape[1] * torch.log(2 * math.pi * noisy_var)
    return torch.logsumexp(log_pi + log_normal, dim=1)


def exact_score(x: torch.Tensor, alpha_bar: torch.Tensor, components: list[int]) -> torch.Tensor:
    x = x.detach().double().requires_grad_(True)
    with torch.enable_grad():
        (score,) = torch.autograd.grad(exact_noisy_log_density(x, alpha_bar, components).sum(), x)
    return score


def exact_score_ddim_cfg(scheduler_config, latents: torch.Tensor, label: int, w: float, steps: int) -> torch.Tensor:
    """Deterministic DDIM with ε̂ = ε_u + w(ε_c − ε_u) from exact scores, float64, on the scheduler's timesteps."""
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    alphas_cumprod = scheduler.alphas_cumprod.double()
    timesteps = scheduler.timesteps.tolist()
    everything = list(range(len(CLASSES)))
    own_class = [k for k, c in enumerate(CLASSES) if c == label]
    x = latents.double().clone()
    for i, t in enumerate(timesteps):
        bar = alphas_cumprod[t]
        bar_prev = (alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps)
                    else torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64))
        s = (1 - bar).sqrt()
        eps_u = -s * exact_score(x, bar, everything)
        eps_c = -s * exact_score(x, bar, own_class)
        eps = eps_u + w * (eps_c - eps_u)
        x0 = (x - s * eps) / bar.sqrt()
        x = bar_prev.sqrt() * x0 + (1 - bar_prev).sqrt() * eps
    return x


@pytest.mark.parametrize("w", [3.0, 5.0])
def test_ddim_cfg_above_w1_matches_an_exact_score_loop(w: float) -> None:
    model = two_class_2d()
    pipe = gmm_pipeline(model)
    # The loop's constants and update are those of this model and scheduler.
    assert torch.allclose(model.mu, torch.tensor(MEANS, dtype=torch.float64))
    assert torch.allclose(model.var.sqrt(), torch.tensor(STDS, dtype=torch.float64))
    assert torch.allclose(model.log_pi.exp(), torch.tensor(WEIGHTS, dtype=torch.float64))
    assert model.component_class.tolist() == CLASSES and model.null_class == 2
    config = pipe.scheduler.config
    assert (config.beta_schedule, config.timestep_spacing, config.set_alpha_to_one, config.clip_sample,
            config.prediction_type, config.thresholding) == ("squaredcos_cap_v2", "trailing", True, False, "epsilon",
                                                             False)
    assert pipe.scheduler.init_noise_sigma == 1.0

    label, n, steps = 0, 300, 50
    latents = torch.randn((n, 2), generator=torch.Generator().manual_seed(4), dtype=pipe.unet.dtype)

    def plugin(scale: float) -> torch.Tensor:
        return guidance.run(pipe, {"scale": scale}, class_labels=[label] * n, num_inference_steps=steps,
                            generator=torch.Generator().manual_seed(1), latents=latents.clone(),
                            output_type="latent").images.double()

    guided, plain = plugin(w), plugin(1.0)
    # Tolerance 1e-5: the pipeline runs in float64 (the model's dtype), but DDIMScheduler keeps ᾱ in float32 and
    # takes sqrt(ᾱ_t), sqrt(1 − ᾱ_t) of float32 scalars (relative error ~6e-8); the first step divides by
    # sqrt(ᾱ_999) ≈ 5e-5, which leaves ≲ 1e-6 per coordinate at the end (1e-12 if the loop rounds like the scheduler).
    torch.testing.assert_close(guided, exact_score_ddim_cfg(config, latents, label, w, steps), atol=1e-5, rtol=0)
    torch.testing.assert_close(plain, exact_score_ddim_cfg(config, latents, label, 1.0, steps), atol=1e-5, rtol=0)

    # Guidance did something, and in the right direction: samples move (~0.38 on average at w = 3) and lie deeper
    # in their class (mean log-density ratio 11.6 at w = 1, 15.9 at w = 3, 18.2 at w = 5).
    assert (guided - plain).norm(dim=1).mean() > 0.2

    def log_ratio(x: torch.Tensor) -> float:
        return float((model.log_density(x, label) - model.log_density(x, 1 - label)).mean())
    assert log_ratio(guided) > log_ratio(plain) + 2.0
