"""An analytic class-conditional Gaussian mixture whose exact noisy denoisers are closed form.

Data: x0 ~ Σ_k π_k N(μ_k, σ_k² I) with component k belonging to class c_k; p(x0 | c) is the mixture of class c's
components, p(x0) the full mixture. Under x_t = a·x0 + s·n (a = sqrt(ᾱ_t), s = sqrt(1 − ᾱ_t)), component k gives
x_t ~ N(a·μ_k, (a²σ_k² + s²) I), so E[x0 | x_t] = Σ_k r_k(x_t)·(μ_k + a·σ_k²/(a²σ_k² + s²)·(x_t − a·μ_k)) with
posterior responsibilities r_k, and the exact ε-prediction is (x_t − a·E[x0 | x_t])/s. The null class (the last
class id) gives the unconditional denoiser. Wrapped in a ClassConditionalPipeline, guidance runs on it unchanged:
an oracle for the math (CFG at w = 1 samples p(x | c) exactly in the many-step limit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import ConfigMixin, DDIMScheduler, DDPMScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from .class_conditional import ClassConditionalPipeline


class GaussianMixtureDenoiser(ModelMixin, ConfigMixin):
    """The exact ε-prediction of a class-conditional isotropic Gaussian mixture."""

    @register_to_config
    def __init__(self, means: Sequence[Sequence[float]], stds: Sequence[float], weights: Sequence[float],
                 classes: Sequence[int], num_train_timesteps: int = 1000,
                 beta_schedule: str = "squaredcos_cap_v2") -> None:
        super().__init__()
        self.register_to_config(num_class_embeds=max(classes) + 2)
        self.register_buffer("mu", torch.tensor(means, dtype=torch.float64))
        self.register_buffer("var", torch.tensor(stds, dtype=torch.float64) ** 2)
        self.register_buffer("log_pi", torch.tensor(weights, dtype=torch.float64).log())
        self.register_buffer("component_class", torch.tensor(classes))
        alphas = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule).alphas_cumprod
        self.register_buffer("alphas_cumprod", alphas.double())

    @property
    def sample_shape(self) -> tuple[int]:
        return (self.mu.shape[1],)

    @property
    def null_class(self) -> int:
        return int(self.config.num_class_embeds) - 1

    def _alpha_bar(self, timestep: torch.Tensor, batch: int) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=self.alphas_cumprod.device).double().reshape(-1).expand(batch)
        low = t.floor().long().clamp(0, len(self.alphas_cumprod) - 1)
        high = (low + 1).clamp(max=len(self.alphas_cumprod) - 1)
        frac = t - low
        return self.alphas_cumprod[low] * (1 - frac) + self.alphas_cumprod[high] * frac

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t, class] (the null class: the unconditional posterior mean), float64."""
        x = sample.double().flatten(1)
        bar = self._alpha_bar(timestep, x.shape[0]).unsqueeze(1)
        a, s2 = bar.sqrt(), 1 - bar
        var = a**2 * self.var + s2  # (B, K)
        dim = x.shape[1]
        distance = ((x.unsqueeze(1) - a.unsqueeze(2) * self.mu) ** 2).sum(-1)
        log_r = self.log_pi - 0.5 * distance / var - 0.5 * dim * var.log()
        labels = class_labels.reshape(-1, 1)
        allowed = (self.component_class == labels) | (labels == self.null_class)
        r = torch.softmax(log_r.masked_fill(~allowed, -math.inf), dim=1)
        gain = (a * self.var / var).unsqueeze(2)
        x0_k = self.mu + gain * (x.unsqueeze(1) - a.unsqueeze(2) * self.mu)
        return (r.unsqueeze(2) * x0_k).sum(1).reshape(sample.shape)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor,
                return_dict: bool = True) -> UNet2DOutput | tuple:
        bar = self._alpha_bar(timestep, sample.shape[0]).reshape(-1, *([1] * (sample.ndim - 1)))
        x0 = self.denoise(sample, timestep, class_labels)
        eps = ((sample.double() - bar.sqrt() * x0) / (1 - bar).sqrt()).to(sample.dtype)
        return UNet2DOutput(sample=eps) if return_dict else (eps,)

    def _components(self, label: int) -> torch.Tensor:
        """Mask of the components of class `label` (all of them for the null class)."""
        if label == self.null_class:
            return torch.ones_like(self.component_class, dtype=torch.bool)
        return self.component_class == label

    def sample_exact(self, label: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """n exact samples of p(x0 | label) (the null class: p(x0))."""
        weights = self.log_pi.exp() * self._components(label)
        component = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=generator)
        noise = torch.randn((n, self.mu.shape[1]), generator=generator, dtype=torch.float64)
        return self.mu[component] + self.var[component].sqrt().unsqueeze(1) * noise

    def log_density(self, x: torch.Tensor, label: int) -> torch.Tensor:
        """log p(x0 | label) at points x (N, D) (the null class: log p(x0))."""
        log_w = self.log_pi.masked_fill(~self._components(label), -math.inf)
        log_w = log_w - torch.logsumexp(log_w, 0)
        dim = x.shape[1]
        distance = ((x.double().unsqueeze(1) - self.mu) ** 2).sum(-1)
        log_n = -0.5 * distance / self.var - 0.5 * dim * (2 * math.pi * self.var).log()
        return torch.logsumexp(log_w + log_n, dim=1)


def gmm_pipeline(denoiser: GaussianMixtureDenoiser) -> ClassConditionalPipeline:
    """A ClassConditionalPipeline with deterministic DDIM on the mixture's own noise schedule."""
    scheduler = DDIMScheduler(num_train_timesteps=denoiser.config.num_train_timesteps,
                              beta_schedule=denoiser.config.beta_schedule, clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing="trailing")
    pipe = ClassConditionalPipeline(unet=denoiser, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def two_class_2d() -> GaussianMixtureDenoiser:
    """Two overlapping classes in 2-D, two components each."""
    return GaussianMixtureDenoiser(means=[[-1.0, 0.0], [-0.5, 1.0], [1.0, 0.0], [0.5, -1.0]], stds=[0.4, 0.3, 0.4, 0.3],
                                   weights=[0.3, 0.2, 0.3, 0.2], classes=[0, 0, 1, 1])


def three_class(dim: int = 16, seed: int = 0) -> GaussianMixtureDenoiser:
    """Three classes in `dim` dimensions, two components each, means at distance ~1.5."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=1.5 / math.sqrt(dim), size=(6, dim)).tolist()
    return GaussianMixtureDenoiser(means=means, stds=[0.3] * 6, weights=[1 / 6] * 6, classes=[0, 0, 1, 1, 2, 2])
