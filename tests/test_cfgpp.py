"""CFG++ through the plugin equals a direct loop implementing the paper's update, for each supported scheduler."""

from __future__ import annotations

import math

import pytest
import torch

import guidance
from guidance.pipelines.schedulers import set_scheduler
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

from reference_loops import (
    ddim_cfgpp,
    ddim_guided,
    dpmpp_2m_cfgpp,
    euler_cfgpp,
    flow_euler_cfgpp,
    sd_call,
    sd_inputs,
)

LOOPS = {"ddim": ddim_cfgpp, "euler": euler_cfgpp, "dpmpp_2m": dpmpp_2m_cfgpp}


@pytest.mark.parametrize("scheduler", list(LOOPS))
@pytest.mark.parametrize("steps", [4, 7])
def test_cfgpp_matches_direct_loop(scheduler: str, steps: int) -> None:
    pipe = set_scheduler(tiny_pipeline("sd"), scheduler)
    inputs = sd_inputs(pipe)
    expected = LOOPS[scheduler](pipe, inputs, steps, 0.6)
    got = guidance.run(pipe, {"rule": "cfgpp", "scale": 0.6}, **sd_call(inputs, steps)).images
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    cfg = guidance.run(pipe, {"rule": "cfg", "scale": 1.6}, **sd_call(inputs, steps)).images
    assert (got - cfg).abs().max() > 1e-3  # not CFG at a small scale


def test_cfgpp_flow_euler_matches_direct_loop() -> None:
    pipe = tiny_pipeline("sd3")
    call = tiny_call_kwargs("sd3", batch=2, seed=2, num_inference_steps=5)
    call.pop("guidance_scale")
    call["latents"] = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    expected = flow_euler_cfgpp(pipe, call, 0.4)
    got = guidance.run(pipe, {"rule": "cfgpp", "scale": 0.4}, **{**call, "latents": call["latents"].clone()}).images
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_cfgpp_flux_matches_direct_loop() -> None:
    """Flux runs cond and negative as separate transformer calls; CFG++ still follows the paper's update."""
    pipe = tiny_pipeline("flux")
    kwargs = tiny_call_kwargs("flux", batch=2, seed=2, num_inference_steps=4)
    kwargs.pop("true_cfg_scale")
    seen: list[dict] = []
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    stats: dict = {}
    got = guidance.run(pipe, {"rule": "cfgpp", "scale": 0.5}, stats=stats, **kwargs).images
    handle.remove()
    first = seen[0]
    x = first["hidden_states"].double()
    sigmas = [float(call["timestep"][0]) for call in seen[::2]] + [0.0]
    with torch.no_grad():
        for i, sigma in enumerate(sigmas[:-1]):
            def velocity(states, pooled, i=i, x=x):
                args = {**seen[2 * i], "hidden_states": x.float(), "encoder_hidden_states": states,
                        "pooled_projections": pooled, "return_dict": False}
                return pipe.transformer(**args)[0].double()
            v_c = velocity(kwargs["prompt_embeds"], kwargs["pooled_prompt_embeds"])
            v_u = velocity(kwargs["negative_prompt_embeds"], kwargs["negative_pooled_prompt_embeds"])
            x0_lam = x - sigma * (v_u + 0.5 * (v_c - v_u))
            x = (1 - sigmas[i + 1]) * x0_lam + sigmas[i + 1] * (x + (1 - sigma) * v_u)
    assert torch.allclose(got, x.float(), atol=1e-4, rtol=1e-4)
    assert stats["denoiser_rows"] == 2 * 2 * 4


def test_cfgpp_lambda_zero_is_unconditional_ddim() -> None:
    """λ = 0: x̂0_u and ε_u — plain DDIM on the unconditional prediction (w = 0)."""
    pipe = tiny_pipeline("sd")
    inputs = sd_inputs(pipe)
    expected = ddim_guided(pipe, inputs, 5, lambda i, x, c, u, a, s: u)
    got = guidance.run(pipe, {"rule": "cfgpp", "scale": 0.0}, **sd_call(inputs, 5)).images
    assert torch.allclose(got, expected, atol=1e-4)


def test_cfgpp_ddim_step_is_cfg_at_omega_t() -> None:
    """One deterministic CFG++ DDIM step equals one CFG step at ω_t = λ·a'·s/(a'·s − s'·a)."""
    pipe = tiny_pipeline("sd")
    inputs = sd_inputs(pipe)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(1)
    t = int(scheduler.timesteps[0])
    bar = scheduler.alphas_cumprod.double()
    a, s = math.sqrt(bar[t]), math.sqrt(1 - bar[t])
    a_prev = math.sqrt(bar[0])  # t − 1000 < 0: the final ᾱ (set_alpha_to_one = False)
    s_prev = math.sqrt(1 - bar[0])
    omega = 0.6 * a_prev * s / (a_prev * s - s_prev * a)
    cfgpp = guidance.run(pipe, {"rule": "cfgpp", "scale": 0.6}, **sd_call(inputs, 1)).images
    cfg = guidance.run(pipe, {"rule": "cfg", "scale": omega}, **sd_call(inputs, 1)).images
    assert torch.allclose(cfgpp, cfg, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_cfgpp_v_prediction(scheduler: str) -> None:
    """v-prediction models: the renoising uses the unconditional noise estimate ε_u = a·v_u + s·x."""
    pipe = set_scheduler(tiny_pipeline("sd"), scheduler)
    pipe.scheduler.register_to_config(prediction_type="v_prediction")
    inputs = sd_inputs(pipe)
    got = guidance.run(pipe, {"rule": "cfgpp", "scale": 0.6}, **sd_call(inputs, 4)).images
    scheduler_obj = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler_obj.set_timesteps(4)
    x = inputs["latents"].double() * float(scheduler_obj.init_noise_sigma)
    with torch.no_grad():
        for i, t in enumerate(scheduler_obj.timesteps):
            if scheduler == "ddim":
                bar = scheduler_obj.alphas_cumprod.double()
                a, s = bar[int(t)].sqrt(), (1 - bar[int(t)]).sqrt()
                xin = x
            else:
                sigma = scheduler_obj.sigmas[i].double()
                a, s = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
                xin = x * a
            v_u, v_c = (v.double() for v in unet_pair_v(pipe, inputs, xin.float(), t))
            v_lam = v_u + 0.6 * (v_c - v_u)
            x0_lam = a * xin - s * v_lam
            eps_u = s * xin + a * v_u
            if scheduler == "ddim":
                prev = int(t) - 1000 // 4
                a_prev = bar[prev] if prev >= 0 else bar[0]
                x = a_prev.sqrt() * x0_lam + (1 - a_prev).sqrt() * eps_u
            else:
                sigma_next = scheduler_obj.sigmas[i + 1].double()
                x = x0_lam + sigma_next * eps_u
    assert torch.allclose(got, x.float(), atol=1e-4, rtol=1e-4)


def unet_pair_v(pipe, inputs, x, t):
    out = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([inputs["neg"], inputs["pos"]])).sample
    return out.chunk(2)


def test_cfgpp_cogvideox_ddim_matches_direct_loop() -> None:
    """CogVideoX's own DDIM (v-prediction, SNR-shifted ᾱ, frames before channels): x' = sqrt(ᾱ')·x̂0_λ +
    sqrt(1 − ᾱ')·ε_u, with x̂0_λ = a·x − s·v_λ and ε_u = s·x + a·v_u, by hand on the pipeline's [negative; prompt]
    batch."""
    pipe = tiny_pipeline("cogvideox")
    kwargs = tiny_call_kwargs("cogvideox", batch=2, seed=2, num_inference_steps=4)
    kwargs.pop("guidance_scale")
    latents = torch.randn((2, 2, 4, 4, 4), generator=torch.Generator().manual_seed(5))
    got = guidance.run(pipe, {"rule": "cfgpp", "scale": 0.6}, **{**kwargs, "latents": latents.clone()}).frames
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(4)
    bar = scheduler.alphas_cumprod.double()
    embeddings = torch.cat([kwargs["negative_prompt_embeds"], kwargs["prompt_embeds"]])
    x = latents.double()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = pipe.transformer(hidden_states=torch.cat([x, x]).float(), encoder_hidden_states=embeddings,
                                   timestep=t.expand(4), return_dict=False)[0].double()
            v_u, v_c = out.chunk(2)
            a, s = bar[int(t)].sqrt(), (1 - bar[int(t)]).sqrt()
            x0_lam = a * x - s * (v_u + 0.6 * (v_c - v_u))
            prev = int(t) - 1000 // 4
            a_prev = bar[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)  # set_alpha_to_one
            x = a_prev.sqrt() * x0_lam + (1 - a_prev).sqrt() * (s * x + a * v_u)
    assert torch.allclose(got.double(), x, atol=1e-4, rtol=1e-4)
    cfg = guidance.run(pipe, {"rule": "cfg", "scale": 1.6}, **{**kwargs, "latents": latents.clone()}).frames
    assert (got - cfg).abs().max() > 1e-3  # not CFG at a small scale
