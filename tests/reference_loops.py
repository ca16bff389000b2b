"""Direct sampling loops written from the papers' update rules, independent of the library's code paths.

Each loop evaluates the tiny pipeline's denoiser on the same [reference; conditional] batch the pipeline builds,
then applies the paper's update by hand. Only the schedulers' published step grids (timesteps, σ, ᾱ) are read.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

Guide = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor]


def sd_inputs(pipe, batch: int = 2, seed: int = 3) -> dict:
    """Prompts, their embeddings (negative, positive) and initial latents for the tiny SD pipeline."""
    prompts = ["cat", "dog", "owl"][:batch]
    negative = ["blurry"] * batch
    pos, neg = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=negative)
    latents = torch.randn((batch, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    return {"prompts": prompts, "negative": negative, "pos": pos, "neg": neg, "latents": latents}


def sd_call(inputs: dict, steps: int) -> dict:
    return {"prompt": inputs["prompts"], "negative_prompt": inputs["negative"], "latents": inputs["latents"].clone(),
            "num_inference_steps": steps, "height": 16, "width": 16, "output_type": "latent"}


def unet_pair(pipe, inputs: dict, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, c): the unconditional and conditional ε at model input x."""
    out = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([inputs["neg"], inputs["pos"]])).sample
    u, c = out.chunk(2)
    return u, c


@torch.no_grad()
def ddim_guided(pipe, inputs: dict, steps: int, guide: Guide) -> torch.Tensor:
    """Deterministic DDIM (η = 0) with ε̂ = guide(i, x, c, u, a, s)."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    bar = scheduler.alphas_cumprod.double()
    x = inputs["latents"].clone()
    for i, t in enumerate(scheduler.timesteps):
        u, c = unet_pair(pipe, inputs, x, t)
        a_t = bar[int(t)]
        eps = guide(i, x, c, u, math.sqrt(a_t), math.sqrt(1 - a_t))
        prev = int(t) - 1000 // steps
        a_prev = bar[prev] if prev >= 0 else bar[0]
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x = (math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps).float()
    return x


@torch.no_grad()
def ddim_cfgpp(pipe, inputs: dict, steps: int, lam: float) -> torch.Tensor:
    """CFG++ (Chung et al., Algorithm 1): x_{t−1} = sqrt(ᾱ')·x̂0(ε_λ) + sqrt(1 − ᾱ')·ε_u."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    bar = scheduler.alphas_cumprod.double()
    x = inputs["latents"].clone().double()
    for t in scheduler.timesteps:
        u, c = (v.double() for v in unet_pair(pipe, inputs, x.float(), t))
        eps_lam = u + lam * (c - u)
        a_t = bar[int(t)]
        prev = int(t) - 1000 // steps
        a_prev = bar[prev] if prev >= 0 else bar[0]
        x0 = (x - (1 - a_t).sqrt() * eps_lam) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * u
    return x.float()


@torch.no_grad()
def euler_cfgpp(pipe, inputs: dict, steps: int, lam: float) -> torch.Tensor:
    """CFG++ Euler (Algorithm 2, VE): x_{i+1} = x̂0_λ + σ_{i+1}·(x_i − x̂0_u)/σ_i."""
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.double()
    x = inputs["latents"].double() * float(scheduler.init_noise_sigma)
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        u, c = (v.double() for v in unet_pair(pipe, inputs, (x / (sigma**2 + 1).sqrt()).float(), t))
        x0_lam = x - sigma * (u + lam * (c - u))
        x0_u = x - sigma * u
        x = x0_lam + sigma_next * (x - x0_u) / sigma
    return x.float()


@torch.no_grad()
def dpmpp_2m_cfgpp(pipe, inputs: dict, steps: int, lam: float) -> torch.Tensor:
    """CFG++ DPM++ 2M (Algorithm 3) in the k-diffusion VE form with t = −log σ."""
    scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                        solver_order=2)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.double()
    x = inputs["latents"].double()  # VP sample; init_noise_sigma is 1
    old_x0_u = None
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        alpha = 1 / (1 + sigma**2).sqrt()
        u, c = (v.double() for v in unet_pair(pipe, inputs, x.float(), t))
        x_ve = x / alpha
        x0_lam = x_ve - sigma * (u + lam * (c - u))
        x0_u = x_ve - sigma * u
        if sigma_next == 0:
            x_ve = x0_lam
        else:
            h = (sigma / sigma_next).log()
            mix = -torch.exp(-h) * x0_u
            if old_x0_u is not None:
                r = (sigmas[i - 1] / sigma).log() / h
                mix = mix - torch.expm1(-h) / (2 * r) * (x0_lam - old_x0_u)
            x_ve = x0_lam + mix + torch.exp(-h) * x_ve
        old_x0_u = x0_u
        x = x_ve / (1 + sigma_next**2).sqrt()
    return x.float()


@torch.no_grad()
def flow_euler_cfgpp(pipe, call: dict, lam: float) -> torch.Tensor:
    """CFG++ on rectified flow (a = 1 − σ, s = σ): x' = (1 − σ')·x̂0_λ + σ'·n̂_u with n̂ = x + (1 − σ)·v."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(call["num_inference_steps"])
    sigmas = scheduler.sigmas.double()
    x = call["latents"].double()
    states = torch.cat([call["negative_prompt_embeds"], call["prompt_embeds"]])
    pooled = torch.cat([call["negative_pooled_prompt_embeds"], call["pooled_prompt_embeds"]])
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        batch = torch.cat([x, x]).float()
        out = pipe.transformer(hidden_states=batch, timestep=t.expand(batch.shape[0]), encoder_hidden_states=states,
                               pooled_projections=pooled).sample.double()
        v_u, v_c = out.chunk(2)
        x0_lam = x - sigma * (v_u + lam * (v_c - v_u))
        noise_u = x + (1 - sigma) * v_u
        x = (1 - sigma_next) * x0_lam + sigma_next * noise_u
    return x.float()


@torch.no_grad()
def digits_gfcg(pipe, classifier, labels: torch.Tensor, latents: torch.Tensor, steps: int, w: float,
                main: str = "gfcg", s: float = 0.0, weak=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """GFCG (Shenoy et al., arXiv 2411.15393, §3) on the digits model (v-prediction), deterministic DDIM: at every
    step the classifier sees x̂0 of the conditional prediction; the reference class is its most likely class other
    than the target, and p_y (its probability of the target) scales the guidance per sample by 1 − p_y.
    main "gfcg": v = v_ref + (1 + (w − 1)(1 − p_y))(v_c − v_ref); "uncond" / "autoguidance" (the `weak` UNet on the
    same class): v = v_0 + w(v_c − v_0) + s(1 − p_y)(v_c − v_ref). Returns the final x and each step's reference
    classes."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    bar = scheduler.alphas_cumprod.double()
    null = torch.full_like(labels, pipe.unet.config.num_class_embeds - 1)
    x, chosen = latents.clone(), []
    for t in scheduler.timesteps:
        a, sd = math.sqrt(bar[int(t)]), math.sqrt(1 - bar[int(t)])
        v_c = pipe.unet(x, t, class_labels=labels).sample
        p = classifier(a * x - sd * v_c).softmax(dim=1)
        p_y = p[torch.arange(len(labels)), labels]
        others = p.clone()
        others[torch.arange(len(labels)), labels] = -1.0
        reference = others.argmax(dim=1)
        chosen.append(reference)
        v_r = pipe.unet(x, t, class_labels=reference).sample
        confusion = (1 - p_y).reshape(-1, 1, 1, 1)
        if main == "gfcg":
            v = v_r + (1 + (w - 1) * confusion) * (v_c - v_r)
        else:
            network, condition = (pipe.unet, null) if main == "uncond" else (weak, labels)
            v_0 = network(x, t, class_labels=condition).sample
            v = v_0 + w * (v_c - v_0) + s * confusion * (v_c - v_r)
        x0 = a * x - sd * v
        eps = (x - a * x0) / sd
        prev = int(t) - scheduler.config.num_train_timesteps // steps
        a_prev = bar[prev] if prev >= 0 else bar[0]
        x = (math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps).float()
    return x, chosen
