"""guidance on pipelines that carry more than a prompt: ControlNet (SD, SDXL, SD3, Flux), IP-Adapter image embeds,
9-channel inpainting UNets, img2img, CPU/group offloading, LoRA, and diffusers' caches (FirstBlockCache,
FasterCache, MagCache, TaylorSeerCache, PyramidAttentionBroadcast).

Every pipeline is a tiny random-weight one (pipelines/testing/tiny.py plus the extra component built here), batch
2, 4 steps. Where a feature leaves the output alone (offloading) the guided result must equal the same spec
without it; otherwise `guidance.run(pipe, {"scale": w})` must equal the pipeline's own CFG at w with the feature
on (max abs diff ≤ 1e-5). Features whose extra inputs are batch-sized (ControlNet residuals, IP-Adapter embeds)
are also run under adaptive guidance with a threshold that switches one sample off before the other, so a step
evaluates the reference rows of some samples only: those inputs must follow the selected rows.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from diffusers import (
    ControlNetModel,
    FluxControlNetModel,
    FluxControlNetPipeline,
    SD3ControlNetModel,
    StableDiffusion3ControlNetPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_faster_cache,
    apply_first_block_cache,
    apply_mag_cache,
    apply_pyramid_attention_broadcast,
    apply_taylorseer_cache,
)
from diffusers.models.attention_processor import IPAdapterAttnProcessor
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import ImageProjection

import guidance
from guidance.pipelines.testing.tiny import IMAGE_SIZE, TEXT_DIM, tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales

B = 2  # samples per call
N = 4  # inference steps
W = 4.0  # guidance scale
ATOL = 1e-5
CFG_ROWS = 2 * B * N  # denoiser rows of a CFG run: conditional and reference rows of every sample at every step
# A guided step that evaluates fewer rows than CFG calls the denoiser at another batch size: float32 results then
# agree with CFG's to ~2e-6 here (a row mix-up gives 1e-2 to 1).
ROWS_ATOL = 1e-4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def call_kwargs(family: str, scale: float | None = None, steps: int = N, **extra) -> dict:
    """tiny_call_kwargs of `family` (batch B, seed 1); without `scale` the CFG strength arguments are left out."""
    kwargs = tiny_call_kwargs(family, batch=B, seed=1, guidance_scale=scale or 1.0, num_inference_steps=steps)
    return {**(kwargs if scale is not None else strip_scales(kwargs)), **extra}


def native(pipe, family: str, scale: float = W, **extra) -> torch.Tensor:
    """The pipeline's own CFG at `scale`. The global generator is seeded: SD3's ControlNet pipeline samples the
    control image's latents from it."""
    torch.manual_seed(0)
    return output_tensor(pipe(**call_kwargs(family, scale, **extra)))


def guided(pipe, family: str, spec, stats: dict | None = None, **extra) -> torch.Tensor:
    torch.manual_seed(0)
    return output_tensor(guidance.run(pipe, spec, stats=stats, **call_kwargs(family, **extra)))


def latents_recorder() -> tuple[list[torch.Tensor], object]:
    """A callback_on_step_end that keeps the latents after every step."""
    seen: list[torch.Tensor] = []

    def record(pipeline, step, timestep, callback_kwargs):
        seen.append(callback_kwargs["latents"].detach().clone())
        return callback_kwargs

    return seen, record


def split_threshold(cfg_stats: dict) -> float:
    """An AG threshold between the two samples' first-step cosines (from a CFG run): one sample switches to
    conditional-only sampling after step 0, the other is still guided at step 1, so that step evaluates the
    reference rows of one sample only (index-selected rows, not a slice of the batch)."""
    first = cfg_stats["steps"][0]["cosine"]
    assert abs(first[0] - first[1]) > 1e-5, f"the samples' first-step cosines {first} cannot be told apart"
    return (first[0] + first[1]) / 2


def ag_plan(cfg_stats: dict, threshold: float) -> list[list[int]]:
    """The steps at which each sample is still guided under AG with `threshold`, from the CFG run's cosines (AG is
    CFG for a sample until the step after its cosine first exceeds the threshold)."""
    cosines = [record["cosine"] for record in cfg_stats["steps"]]
    plan = []
    for b in range(B):
        steps = []
        for k in range(len(cosines)):
            steps.append(k)
            margin = cosines[k][b] - threshold
            if k < len(cosines) - 1:
                assert abs(margin) > 1e-6, f"sample {b}, step {k}: cosine too close to the threshold"
            if margin > 0:
                break
        plan.append(steps)
    return plan


def check_adaptive_follows_rows(pipe, family: str, **extra) -> None:
    """AG with a threshold that switches the samples at different steps: fewer rows than CFG, finite output, the
    reference rows per step the CFG cosines predict (a partial step among them), and every sample's latents equal
    to CFG's after each step at which it was still guided (its rows, with their extra inputs, were the right
    ones)."""
    cfg_latents, record = latents_recorder()
    cfg_stats: dict = {}
    guided(pipe, family, {"scale": W}, cfg_stats, callback_on_step_end=record, **extra)
    threshold = split_threshold(cfg_stats)
    plan = ag_plan(cfg_stats, threshold)
    expected_rows = [sum(k in steps for steps in plan) for k in range(N)]
    assert any(0 < rows < B for rows in expected_rows), f"no step guides only some samples: {expected_rows}"

    ag_latents, record = latents_recorder()
    stats: dict = {}
    spec = {"scale": W, "policy": {"name": "adaptive", "threshold": threshold}}
    out = guided(pipe, family, spec, stats, callback_on_step_end=record, **extra)
    assert torch.isfinite(out).all()
    assert stats["denoiser_rows"] < CFG_ROWS
    assert [r["reference_rows"] for r in stats["steps"]] == expected_rows
    for b, steps in enumerate(plan):
        for k in steps:
            diff = max_diff(ag_latents[k][b], cfg_latents[k][b])
            assert diff <= ROWS_ATOL, f"sample {b} after step {k} (still guided): differs from CFG by {diff}"


# ---------------------------------------------------------------------------------------------------- ControlNet

CONTROLNET_FAMILIES = ("sd", "sdxl", "sd3", "flux")


def randomize_zero_init(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A ControlNet starts from zero convolutions / projections, so a random one has no effect at all: give every
    all-zero parameter small random values (the control image then changes the result)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.numel() and not parameter.any():
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def controlnet_pipeline(family: str):
    """The tiny pipeline of `family` with a ControlNet of the same shape: SD/SDXL's is the UNet's encoder half
    (the conditioning embedding downsamples 16 px → 8 like the VAE), SD3's and Flux's a 1-block transformer that
    reads the VAE latents of the control image."""
    base = tiny_pipeline(family)
    components = dict(base.components)
    torch.manual_seed(1)
    if family in ("sd", "sdxl"):
        controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(8, 16))
        if family == "sd":
            pipe = StableDiffusionControlNetPipeline(**components, controlnet=randomize_zero_init(controlnet, 1),
                                                     requires_safety_checker=False)
        else:
            pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=randomize_zero_init(controlnet, 1),
                                                       add_watermarker=False)
    elif family == "sd3":
        controlnet = SD3ControlNetModel(
            sample_size=IMAGE_SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM, caption_projection_dim=16,
            pooled_projection_dim=TEXT_DIM, pos_embed_max_size=IMAGE_SIZE // 2)
        pipe = StableDiffusion3ControlNetPipeline(**components, controlnet=randomize_zero_init(controlnet, 1))
    else:
        controlnet = FluxControlNetModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
            axes_dims_rope=(4, 4, 8))
        pipe = FluxControlNetPipeline(**components, controlnet=randomize_zero_init(controlnet, 1))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def control_inputs(family: str, conditioning_scale: float = 1.0) -> dict:
    """One control image per sample (different ones, so rows mixed up between samples would show)."""
    image = torch.rand(B, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    key = "image" if family in ("sd", "sdxl") else "control_image"
    return {key: image, "controlnet_conditioning_scale": conditioning_scale}


@pytest.mark.parametrize("family", CONTROLNET_FAMILIES)
def test_controlnet_cfg_equals_native_cfg(family: str) -> None:
    pipe = controlnet_pipeline(family)
    expected = native(pipe, family, **control_inputs(family))
    assert max_diff(expected, native(pipe, family, **control_inputs(family, 0.0))) > 1e-2, "control has no effect"
    stats: dict = {}
    got = guided(pipe, family, {"scale": W}, stats, **control_inputs(family))
    assert max_diff(got, expected) <= ATOL
    assert stats["denoiser_rows"] == CFG_ROWS


@pytest.mark.parametrize("family", CONTROLNET_FAMILIES)
def test_controlnet_adaptive_guidance_selects_residual_rows(family: str) -> None:
    """The ControlNet residuals (down/mid block residuals, block_controlnet_hidden_states, controlnet_block_samples)
    are batch-sized lists: they must be cut to the rows AG evaluates."""
    check_adaptive_follows_rows(controlnet_pipeline(family), family, **control_inputs(family))


def first_step_rows(pipe, family: str, spec, **extra) -> torch.Tensor:
    """Every row the denoiser's last layer output during the first step (all its calls, concatenated): the raw
    branch predictions, before any guidance combines them."""
    last = pipe.unet.conv_out if getattr(pipe, "unet", None) is not None else pipe.transformer.proj_out
    rows: list[torch.Tensor] = []
    stepped: list[int] = []

    def keep(module, args, out):
        if not stepped:
            rows.append(out.detach().clone())

    def stop(pipeline, step, timestep, callback_kwargs):
        stepped.append(step)
        return callback_kwargs

    handle = last.register_forward_hook(keep)
    try:
        guided(pipe, family, spec, callback_on_step_end=stop, **extra)
    finally:
        handle.remove()
    return torch.cat(rows)


@pytest.mark.parametrize("family", CONTROLNET_FAMILIES)
def test_controlnet_icg_runs_with_the_conditional_residuals(family: str) -> None:
    """ICG's reference rows are copies of the conditional rows (residuals included) with a random condition: it
    runs, and in the first step (same x_T) every sample's conditional prediction is among the rows it evaluates,
    equal to the one CFG evaluates (the conditional rows got the conditional rows' residuals)."""
    pipe = controlnet_pipeline(family)
    cfg_rows = first_step_rows(pipe, family, {"scale": W}, **control_inputs(family))
    cfg_cond = cfg_rows[:B] if family == "flux" else cfg_rows[B:2 * B]  # Flux: cond call first; others [uncond; cond]
    spec = {"scale": W, "reference": {"name": "icg", "source": "gaussian"}}
    icg_rows = first_step_rows(pipe, family, spec, **control_inputs(family))
    assert icg_rows.shape[0] == 2 * B
    for b in range(B):
        closest = min(max_diff(row, cfg_cond[b]) for row in icg_rows)
        assert closest <= ROWS_ATOL, f"sample {b}: no ICG row is its conditional prediction (closest {closest})"

    stats: dict = {}
    out = guided(pipe, family, spec, stats, **control_inputs(family))
    assert torch.isfinite(out).all()
    assert out.shape == native(pipe, family, **control_inputs(family)).shape
    assert stats["denoiser_rows"] == CFG_ROWS


# ---------------------------------------------------------------------------------------------------- IP-Adapter


def ip_adapter_state_dict(unet: UNet2DConditionModel, seed: int = 5) -> dict:
    """Random IP-Adapter weights for `unet` in the layout of the original checkpoints: an image projection
    (image embedding → 4 tokens) and to_k_ip / to_v_ip of every cross-attention layer (numbered 1, 3, 5, …)."""
    torch.manual_seed(seed)
    config = unet.config
    widths = list(config.block_out_channels)

    def hidden_size(name: str) -> int:
        block, index = name.split(".")[:2]
        if block == "mid_block":
            return widths[-1]
        return (widths[::-1] if block == "up_blocks" else widths)[int(index)]

    layers = {}
    for number, name in enumerate(n for n in unet.attn_processors if not n.endswith("attn1.processor")):
        weights = IPAdapterAttnProcessor(hidden_size=hidden_size(name),
                                         cross_attention_dim=config.cross_attention_dim).state_dict()
        layers[f"{2 * number + 1}.to_k_ip.weight"] = weights["to_k_ip.0.weight"]
        layers[f"{2 * number + 1}.to_v_ip.weight"] = weights["to_v_ip.0.weight"]
    projection = ImageProjection(cross_attention_dim=config.cross_attention_dim,
                                 image_embed_dim=config.cross_attention_dim, num_image_text_embeds=4).state_dict()
    image_proj = {"proj.weight": projection["image_embeds.weight"], "proj.bias": projection["image_embeds.bias"],
                  "norm.weight": projection["norm.weight"], "norm.bias": projection["norm.bias"]}
    return {"image_proj": image_proj, "ip_adapter": layers}


def ip_adapter_pipeline(dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    pipe = tiny_pipeline("sd")
    pipe.load_ip_adapter(ip_adapter_state_dict(pipe.unet), subfolder="", weight_name="", image_encoder_folder=None)
    return pipe.to(dtype)


def image_embeds(seed: int = 9, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """`ip_adapter_image_embeds` under CFG: one image's [negative; positive] embedding. The pipeline repeats it for
    every sample (diffusers has no per-sample image embeds), so the UNet gets [negatives; positives] rows."""
    return [torch.randn(2, 1, TEXT_DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)]


def test_ip_adapter_cfg_equals_native_cfg() -> None:
    pipe = ip_adapter_pipeline()
    expected = native(pipe, "sd", ip_adapter_image_embeds=image_embeds())
    assert max_diff(expected, native(pipe, "sd", ip_adapter_image_embeds=image_embeds(10))) > 1e-2, \
        "the image embeds have no effect"
    got = guided(pipe, "sd", {"scale": W}, ip_adapter_image_embeds=image_embeds())
    assert max_diff(got, expected) <= ATOL


def test_ip_adapter_adaptive_guidance_selects_embed_rows() -> None:
    """The image embeds reach the UNet as a list inside added_cond_kwargs: AG must cut them to its rows."""
    check_adaptive_follows_rows(ip_adapter_pipeline(), "sd", ip_adapter_image_embeds=image_embeds())


def test_ip_adapter_adaptive_guidance_is_per_sample() -> None:
    """AG on a batch of 2 whose samples switch at different steps gives each sample what it gets alone in a batch
    of 1 (float64: float32 results depend on the batch size by ~1e-6)."""
    pipe = ip_adapter_pipeline(torch.float64)
    latents = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    prompts, negatives = ["cat", "dog"], ["blurry", "dark"]

    def run(samples: list[int], spec: dict, stats: dict | None = None) -> torch.Tensor:
        return output_tensor(guidance.run(
            pipe, spec, stats=stats, prompt=[prompts[i] for i in samples],
            negative_prompt=[negatives[i] for i in samples], latents=latents[samples],
            ip_adapter_image_embeds=image_embeds(dtype=torch.float64), num_inference_steps=N,
            height=IMAGE_SIZE, width=IMAGE_SIZE, output_type="latent"))

    cfg_stats: dict = {}
    run([0, 1], {"scale": W}, cfg_stats)
    threshold = split_threshold(cfg_stats)
    spec = {"scale": W, "policy": {"name": "adaptive", "threshold": threshold}}
    stats: dict = {}
    batch = run([0, 1], spec, stats)
    assert any(0 < r["reference_rows"] < B for r in stats["steps"]), "no step guides only some samples"
    for i in range(B):
        alone = run([i], spec)
        diff = max_diff(batch[i], alone[0])
        assert diff <= ATOL, f"sample {i}: batch-2 AG result differs from its batch-1 run by {diff}"
    assert max_diff(batch[0], batch[1]) > 1e-2


# ---------------------------------------------------------------------------------------------------- inpainting

APG_AS_CFG = {"name": "apg", "eta": 1.0, "norm_threshold": None, "momentum": 0.0}


def inpaint_pipeline(family: str):
    """SD / SDXL inpainting with a 9-channel UNet: latents, mask, masked-image latents."""
    base = tiny_pipeline(family)
    torch.manual_seed(2)
    unet = UNet2DConditionModel.from_config({**base.unet.config, "in_channels": 9}).eval()
    components = {**base.components, "unet": unet}
    if family == "sd":
        pipe = StableDiffusionInpaintPipeline(**components, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLInpaintPipeline(**components, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inpaint_inputs() -> dict:
    image = torch.rand(B, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(B, 1, IMAGE_SIZE, IMAGE_SIZE)
    mask[:, :, 4:12, 4:12] = 1.0
    return {"image": image, "mask_image": mask}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_inpaint_9_channel_cfg_equals_native_cfg(family: str) -> None:
    pipe = inpaint_pipeline(family)
    expected = native(pipe, family, **inpaint_inputs())
    got = guided(pipe, family, {"scale": W}, **inpaint_inputs())
    assert max_diff(got, expected) <= ATOL


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_inpaint_9_channel_apg_reduces_to_cfg(family: str) -> None:
    """APG with η = 1, r = ∞, β = 0 is CFG (computed on x̂0, from the latent channels of the UNet input)."""
    pipe = inpaint_pipeline(family)
    expected = native(pipe, family, 5.0, **inpaint_inputs())
    got = guided(pipe, family, {"scale": 5.0, "rule": APG_AS_CFG}, **inpaint_inputs())
    assert torch.allclose(got, expected, atol=2e-4, rtol=1e-4)


def test_inpaint_9_channel_cosine_uses_the_latent_channels() -> None:
    """AG's cosine is taken on x̂0 = (x_t − s·ε)/a with x_t the first 4 of the 9 input channels (not the mask or
    the masked-image latents): the recorded cosines equal the ones computed by hand from the UNet's raw input and
    output (DDIM: a = √ᾱ_t, s = √(1 − ᾱ_t))."""
    pipe = inpaint_pipeline("sd")
    inputs, outputs = [], []
    hooks = [pipe.unet.conv_in.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone())),
             pipe.unet.conv_out.register_forward_hook(lambda m, args, out: outputs.append(out.detach().clone()))]
    stats: dict = {}
    try:
        guided(pipe, "sd", {"scale": W}, stats, **inpaint_inputs())
    finally:
        for hook in hooks:
            hook.remove()
    assert len(inputs) == len(outputs) == N and inputs[0].shape[1] == 9
    for k, record in enumerate(stats["steps"]):
        alpha_bar = float(pipe.scheduler.alphas_cumprod[int(pipe.scheduler.timesteps[k])])
        a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        x = inputs[k][B:, :4]  # the conditional rows of [uncond; cond], latent channels
        x0_u, x0_c = ((x - s * eps) / a for eps in outputs[k].chunk(2))
        by_hand = torch.nn.functional.cosine_similarity(x0_c.flatten(1), x0_u.flatten(1))
        assert torch.allclose(torch.tensor(record["cosine"]), by_hand, atol=1e-5), f"step {k}"


# ---------------------------------------------------------------------------------------------------- img2img

IMG2IMG_STEPS = 5
STRENGTH = 0.6  # the run makes the last 3 of 5 steps


def img2img_pipeline() -> StableDiffusionImg2ImgPipeline:
    pipe = StableDiffusionImg2ImgPipeline(**tiny_pipeline("sd").components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def img2img_inputs() -> dict:
    image = torch.rand(B, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(4))
    return {"image": image, "strength": STRENGTH, "steps": IMG2IMG_STEPS}


def test_img2img_cfg_equals_native_cfg() -> None:
    pipe = img2img_pipeline()
    expected = native(pipe, "sd", **img2img_inputs())
    stats: dict = {}
    got = guided(pipe, "sd", {"scale": W}, stats, **img2img_inputs())
    assert max_diff(got, expected) <= ATOL
    first = IMG2IMG_STEPS - int(IMG2IMG_STEPS * STRENGTH)
    assert [r["step"] for r in stats["steps"]] == list(range(first, IMG2IMG_STEPS))
    assert [r["t"] for r in stats["steps"]] == pytest.approx(pipe.scheduler.timesteps[first:].tolist())


def test_img2img_adaptive_guidance_runs() -> None:
    pipe = img2img_pipeline()
    stats: dict = {}
    out = guided(pipe, "sd", {"scale": W, "policy": {"name": "adaptive", "threshold": 0.0}}, stats,
                 **img2img_inputs())
    steps = int(IMG2IMG_STEPS * STRENGTH)
    assert torch.isfinite(out).all()
    assert B * steps < stats["denoiser_rows"] < 2 * B * steps


# ---------------------------------------------------------------------------------------------------- offloading

CPU = torch.device("cpu")
OFFLOAD_SPEC = {"scale": W, "rule": {"name": "apg", "eta": 0.0, "norm_threshold": 5.0, "momentum": -0.5},
                "policy": {"name": "adaptive", "threshold": 0.0}}


def offload(pipe, mode: str) -> None:
    if mode == "model":
        pipe.enable_model_cpu_offload(device="cpu")  # without device= it refuses: "requires accelerator"
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device="cpu")
    else:
        pipe.unet.enable_group_offload(onload_device=CPU, offload_device=CPU, offload_type=mode,
                                       num_blocks_per_group=1 if mode == "block_level" else None)


@pytest.mark.parametrize("mode", ["model", "sequential", "block_level", "leaf_level"])
def test_offloading_keeps_the_guided_result_and_restores(mode: str, row_counter) -> None:
    """enable_model_cpu_offload / enable_sequential_cpu_offload (accelerate hooks, here onto the CPU) and diffusers
    group offloading of the UNet (block or leaf level, CPU to CPU): the same guided result as without, and
    afterwards the pipeline's own CFG is as before (same output, every row evaluated)."""
    expected = guided(tiny_pipeline("sd"), "sd", OFFLOAD_SPEC)
    pipe = tiny_pipeline("sd")
    offload(pipe, mode)
    try:
        before = native(pipe, "sd")
    except TypeError as error:
        if mode == "sequential" and "requires_grad" in str(error):
            import accelerate

            pytest.skip(f"enable_sequential_cpu_offload(device='cpu') is accepted, but then the plain pipeline call "
                        f"(no guidance) fails (torch {torch.__version__}, accelerate {accelerate.__version__}): "
                        "accelerate's set_module_tensor_to_device rebuilds each parameter as "
                        "type(param)(value, requires_grad=...), and since this torch's Parameter.to(device) returns "
                        "a plain Tensor, whose constructor refuses requires_grad, the second forward raises "
                        f"TypeError: {str(error).splitlines()[0]}")
        raise
    stats: dict = {}
    got = guided(pipe, "sd", OFFLOAD_SPEC, stats)
    assert max_diff(got, expected) <= ATOL
    assert stats["denoiser_rows"] < CFG_ROWS
    counter = row_counter(pipe)
    after = native(pipe, "sd")
    assert max_diff(after, before) <= ATOL
    assert counter.rows == CFG_ROWS


@pytest.mark.parametrize("mode", ["model", "block_level", "leaf_level"])
def test_offloading_attach_guides_every_call_of_the_block(mode: str) -> None:
    """Inside one `guidance.attach` block every pipeline call is guided. With enable_model_cpu_offload the
    pipeline ends each call with maybe_free_model_hooks(), which removes accelerate's hook from the UNet and
    installs a new one: the second call must still be guided, not run as the pipeline's own CFG."""
    expected = guided(tiny_pipeline("sd"), "sd", OFFLOAD_SPEC)
    pipe = tiny_pipeline("sd")
    offload(pipe, mode)
    with guidance.attach(pipe, OFFLOAD_SPEC) as session:
        for call in range(2):
            torch.manual_seed(0)
            out = output_tensor(pipe(**call_kwargs("sd", 2.0)))  # any scale > 1: the spec sets the strength
            assert max_diff(out, expected) <= ATOL, f"call {call} of the attach block is not the guided result"
    assert session.stats["runs"] == 2
    assert session.stats["denoiser_rows"] < 2 * CFG_ROWS


# ---------------------------------------------------------------------------------------------------- LoRA


def test_lora_cfg_equals_native_cfg_unfused_and_fused(tmp_path) -> None:
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = tiny_pipeline("sd")
    torch.manual_seed(7)
    donor.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                      init_lora_weights=False))  # random A and B: the LoRA changes the UNet
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(donor.unet))

    pipe = tiny_pipeline("sd")
    plain = native(pipe, "sd")
    pipe.load_lora_weights(tmp_path)
    with_lora = native(pipe, "sd")
    assert max_diff(with_lora, plain) > 1e-2, "the LoRA has no effect"
    assert max_diff(guided(pipe, "sd", {"scale": W}), with_lora) <= ATOL

    half = {"cross_attention_kwargs": {"scale": 0.5}}  # the LoRA scale, read by the UNet's forward
    half_lora = native(pipe, "sd", **half)
    assert max_diff(half_lora, with_lora) > 1e-2
    assert max_diff(guided(pipe, "sd", {"scale": W}, **half), half_lora) <= ATOL

    pipe.fuse_lora()
    fused = native(pipe, "sd")
    assert max_diff(fused, with_lora) <= 1e-4
    assert max_diff(guided(pipe, "sd", {"scale": W}), fused) <= ATOL


# ---------------------------------------------------------------------------------------------------- caches

CACHES = ("FirstBlockCache", "FasterCache", "MagCache", "TaylorSeerCache", "PyramidAttentionBroadcast")
_APPLY = {"FirstBlockCache": apply_first_block_cache, "FasterCache": apply_faster_cache,
          "MagCache": apply_mag_cache, "TaylorSeerCache": apply_taylorseer_cache,
          "PyramidAttentionBroadcast": apply_pyramid_attention_broadcast}
# diffusers 0.42 cannot run these natively (nothing to compare guidance with); the refusal tests still run.
NATIVE_FAILURES = {
    ("sd3", "FirstBlockCache"): (TypeError, "FirstBlockCache on SD3Transformer2DModel fails in plain diffusers 0.42: "
                                 "the last JointTransformerBlock (context_pre_only) returns encoder_hidden_states "
                                 "None, which first_block_cache.py subtracts from (TypeError)"),
}


def current_timestep(pipe):
    """FasterCache's and PAB's timestep source: Flux has `pipe.current_timestep`; SD3's pipeline (0.42) does not,
    so read it from the scheduler (its step index is None before the first step)."""
    if hasattr(type(pipe), "current_timestep"):
        return lambda: pipe.current_timestep
    scheduler = pipe.scheduler
    return lambda: scheduler.timesteps[scheduler.step_index or 0]


def cache_config(name: str, pipe, family: str):
    """Settings that really skip work within 4 steps of the tiny models (the cache changes the result)."""
    if name == "FirstBlockCache":
        return FirstBlockCacheConfig(threshold=0.5)
    if name == "FasterCache":
        # Flux's true CFG runs cond and uncond as separate calls, not the doubled batch FasterCache splits itself:
        # there only the attention skipping applies (is_guidance_distilled). SD3's batch also splits the pooled text.
        return FasterCacheConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 901),
            unconditional_batch_skip_range=2, unconditional_batch_timestep_skip_range=(-1, 901),
            attention_weight_callback=lambda _: 0.5, current_timestep_callback=current_timestep(pipe),
            is_guidance_distilled=family == "flux", tensor_format="BCHW",
            _unconditional_conditional_input_kwargs_identifiers=(
                "hidden_states", "encoder_hidden_states", "timestep", "pooled_projections"))
    if name == "MagCache":
        # calibration ratios for exactly N steps (one per step); with no warm-up steps every other step is skipped
        return MagCacheConfig(threshold=1.0, max_skip_steps=2, retention_ratio=0.0, num_inference_steps=N,
                              mag_ratios=[1.0, 0.95, 0.9, 0.85])
    if name == "TaylorSeerCache":
        return TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1, max_order=1,
                                     taylor_factors_dtype=torch.float32)
    return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                           spatial_attention_timestep_skip_range=(-1, 1001),
                                           current_timestep_callback=current_timestep(pipe))


def cached_pipeline(family: str, name: str):
    """A fresh tiny pipeline (fresh cache state) with the cache on its transformer: `enable_cache` where the model
    has it (Flux), the hook's apply function otherwise (SD3Transformer2DModel has no CacheMixin)."""
    pipe = tiny_pipeline(family)
    config = cache_config(name, pipe, family)
    if isinstance(pipe.transformer, CacheMixin):
        pipe.transformer.enable_cache(config)
    else:
        _APPLY[name](pipe.transformer, config)
    return pipe


def cache_scope(pipe):
    """Flux's pipeline names a cache context around each transformer call; SD3's (0.42) does not, so the test sets
    one for the whole call (FirstBlockCache and TaylorSeer refuse to run without)."""
    if isinstance(pipe.transformer, CacheMixin):
        return contextlib.nullcontext()
    return CacheMixin.cache_context(pipe.transformer, "cond")


def native_with_cache(family: str, name: str) -> torch.Tensor:
    pipe = cached_pipeline(family, name)
    known = NATIVE_FAILURES.get((family, name))
    try:
        with cache_scope(pipe):
            return native(pipe, family)
    except Exception as error:
        if known and isinstance(error, known[0]):
            pytest.skip(f"{known[1]}: {type(error).__name__}: {error}")
        raise


@pytest.mark.parametrize("name", CACHES)
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_cache_cfg_equals_native_cfg_with_the_same_cache(family: str, name: str) -> None:
    expected = native_with_cache(family, name)
    assert max_diff(expected, native(tiny_pipeline(family), family)) > 1e-4, f"{name} skipped nothing"
    pipe = cached_pipeline(family, name)
    stats: dict = {}
    with cache_scope(pipe):
        got = guided(pipe, family, {"scale": W, "policy": "always"}, stats)
    assert max_diff(got, expected) <= ATOL
    assert stats["denoiser_rows"] == CFG_ROWS


ROW_CHANGING = {
    "adaptive": ({"scale": W, "policy": {"name": "adaptive", "threshold": 0.0}}, "always"),
    "linear_schedule": ({"scale": W, "schedule": "linear"}, "constant"),  # its first step has w = 1: no reference
    "zero_init": ({"scale": W, "rule": "cfg_zero_star"}, "zero_init_steps: 0"),  # its first step evaluates nothing
}


@pytest.mark.parametrize("spec_name", list(ROW_CHANGING))
@pytest.mark.parametrize("name", CACHES)
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_cache_refuses_specs_that_change_rows_between_steps(family: str, name: str, spec_name: str) -> None:
    """A cache keeps per-row state from step to step; a spec that evaluates different rows at different steps
    would feed it mismatched rows. guidance refuses, naming the cache and the fixes, and leaves the pipeline as it
    was (its next plain call is the cached pipeline's own result)."""
    spec, fix = ROW_CHANGING[spec_name]
    pipe = cached_pipeline(family, name)
    with cache_scope(pipe):
        with pytest.raises(guidance.GuidanceError) as refused:
            guided(pipe, family, spec)
    message = str(refused.value)
    assert name in message, message
    assert fix in message and "disable" in message, message
    if (family, name) not in NATIVE_FAILURES:
        with cache_scope(pipe):
            after = native(pipe, family)
        assert max_diff(after, native_with_cache(family, name)) <= ATOL
