"""`guidance.as_guider` in the modular pipelines diffusers ships (docs/CONVENTIONS.md §34): SDXL, SD3, Wan and
Qwen-Image where the installed diffusers has them (Flux's has no guider), built from the tiny standard pipelines'
components. The modular pipeline with the guider equals guidance.run on the standard pipeline with the same
components, seeds and steps (≤ 1e-5); stock CFG also equals diffusers' own ClassifierFreeGuidance guider there.

Both pipelines run in float64: in float32 the standard SDXL pipeline's joined [uncond; cond] UNet call and the modular
loop's call per condition differ by batch-composition rounding (2.4e-5 after 4 steps of diffusers' own CFG, measured),
which says nothing about guidance; in float64 they agree to 2e-15. Wan keeps its latents in float32 in both pipelines.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance

import guidance
from guidance.errors import GuidanceError
from guidance.pipelines.guider import GuidanceGuider
from guidance.pipelines.testing.modular import modular_latents, modular_pipeline, standard_latents
from guidance.pipelines.testing.tiny import tiny_call_kwargs, tiny_pipeline

FAMILIES = ("sdxl", "sd3", "wan", "qwenimage", "flux")
# a perturbed-network term each family's guider serves: PAG's identity attention where the family has diffusers
# Attention self-attention; Wan's attention has no identity path (§27), so SLG's skipped block there
PERTURBED = {"sdxl": {"reference": "pag", "scale": 3.0}, "sd3": {"reference": "pag", "scale": 3.0},
             "wan": {"reference": {"name": "slg", "layers": [1]}, "scale": 2.0},
             "qwenimage": {"reference": {"name": "pag", "layers": ["transformer_blocks.1"]}, "scale": 2.0}}
SPECS = {
    "cfg": {"scale": 5.0},
    "apg": {"rule": "apg", "scale": 8.0},
    "schedule": {"scale": 5.0, "schedule": "linear"},
    "icg": {"scale": 4.0, "reference": "icg"},
    "tsg": {"scale": 4.0, "reference": "tsg"},
    "perturbed_term": None,  # cfg plus the family's PERTURBED term
    "interval_rescale": {"scale": 6.0, "schedule": {"name": "interval", "sigma_lo": 0.5, "sigma_hi": 30.0},
                         "rescale": 0.5},
    "cfgpp": {"rule": "cfgpp", "scale": 0.6, "schedule": "linear"},  # its step folded into the prediction (§34)
}


def call_kwargs(family: str) -> dict:
    """Fresh call arguments (a fresh generator: 0.35's modular pipeline consumes the one it is given), in float64."""
    kwargs = tiny_call_kwargs(family, batch=2, seed=1)
    kwargs = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
    return {**kwargs, "output_type": "latent"}


@pytest.fixture(scope="module", params=FAMILIES)
def pipes(request):
    """(family, standard pipeline, modular pipeline on its components); skipped, with diffusers' reason, where the
    installed diffusers has no modular pipeline of the family that a guider can serve."""
    family = request.param
    standard = tiny_pipeline(family).to(torch.float64)
    try:
        modular = modular_pipeline(family, standard)
    except LookupError as reason:
        pytest.skip(str(reason))
    try:  # diffusers' own pipeline with its own guider: 0.35's modular Wan cannot read its prompt embeddings
        modular_latents(modular, call_kwargs(family))
    except AttributeError as error:
        pytest.skip(f"diffusers' modular {family} pipeline fails with its own guider: {error}")
    return family, standard, modular


def call_kwargs_without_scales(family: str) -> dict:
    """call_kwargs for guidance.run, which sets the pipeline's CFG switch itself."""
    return {k: v for k, v in call_kwargs(family).items() if k not in ("guidance_scale", "true_cfg_scale")}


def modular_run(pipes, spec) -> torch.Tensor:
    """The final latents of the modular pipeline with `as_guider(spec)`."""
    family, _, modular = pipes
    modular.update_components(guider=guidance.as_guider(spec, scheduler=modular.scheduler))
    return modular_latents(modular, call_kwargs(family))


def run_both(pipes, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """(the modular pipeline with the guider, guidance.run on the standard pipeline): final latents."""
    family, standard, _ = pipes
    kwargs = call_kwargs_without_scales(family)
    return modular_run(pipes, spec), standard_latents(family, standard, guidance.run(standard, spec, **kwargs), kwargs)


@pytest.mark.parametrize("method", list(SPECS))
def test_modular_guider_equals_run(pipes, method: str) -> None:
    family = pipes[0]
    if method == "cfgpp" and family == "qwenimage":
        pytest.skip("refused: Qwen-Image's loop rescales the guider's prediction per token (test_family_refusals)")
    spec = SPECS[method] or {"scale": 5.0, "terms": [PERTURBED[family]]}
    got, expected = run_both(pipes, spec)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5
    # the method did its own thing: cfg is not the conditional prediction, the others are not cfg at their scale
    # (CFG++'s λ = 0.6 against CFG at w = 7)
    baseline = {"cfg": {"scale": 1.0}, "cfgpp": {"scale": 7.0}}.get(method, {"scale": spec["scale"]})
    assert (got - modular_run(pipes, baseline)).abs().max() > 1e-3


def test_guider_resets_per_call(pipes) -> None:
    """One guider, two pipeline calls: APG's momentum and AG's switches start afresh (§8, §5)."""
    family, _, modular = pipes
    spec = {"rule": "apg", "scale": 8.0, "policy": {"name": "adaptive", "threshold": 0.9}}
    modular.update_components(guider=guidance.as_guider(spec, scheduler=modular.scheduler))
    first = modular_latents(modular, call_kwargs(family))
    assert torch.equal(modular_latents(modular, call_kwargs(family)), first)


def test_img2img_locates_its_late_start() -> None:
    """SDXL img2img (strength 0.5 of 6 steps): the loop's steps 0–2 are the scheduler's steps 3–5, where the linear
    schedule and APG's x̂0 take their values, as guidance.run on StableDiffusionXLImg2ImgPipeline does."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    standard = tiny_pipeline("sdxl").to(torch.float64)
    img2img = StableDiffusionXLImg2ImgPipeline(**standard.components)
    modular = modular_pipeline("sdxl", standard)
    spec = {"rule": "apg", "scale": 6.0, "schedule": "linear"}

    def kwargs() -> dict:
        call = {**call_kwargs_without_scales("sdxl"), "num_inference_steps": 6, "strength": 0.5}
        image = torch.rand(2, 3, call["height"], call["width"], generator=torch.Generator().manual_seed(3))
        return {**call, "image": image.double()}

    modular.update_components(guider=guidance.as_guider(spec, scheduler=modular.scheduler))
    got = modular_latents(modular, kwargs())
    stats: dict = {}
    expected = guidance.run(img2img, spec, stats=stats, **kwargs()).images
    assert [step["step"] for step in stats["steps"]] == [3, 4, 5]
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", ["sdxl", "qwenimage"])
def test_low_precision_stays_finite(family: str, dtype: torch.dtype) -> None:
    """APG at w = 15 on tsg, AG and a pag term, in half precision: finite latents."""
    standard = tiny_pipeline(family).to(dtype)
    try:
        modular = modular_pipeline(family, standard)
    except LookupError as reason:
        pytest.skip(str(reason))
    spec = {"rule": "apg", "scale": 15.0, "reference": "tsg", "policy": "adaptive", "terms": [PERTURBED[family]]}
    modular.update_components(guider=guidance.as_guider(spec, scheduler=modular.scheduler))
    kwargs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in tiny_call_kwargs(family, batch=2).items()}
    latents = modular_latents(modular, kwargs)
    assert latents.dtype == dtype and torch.isfinite(latents).all()


def test_wan22_experts() -> None:
    """Wan 2.2's two experts: one guider serving both (`guider` and `guider_2`) carries APG's momentum and AG's
    switches across the boundary as a session does; two guiders give each expert its scale, as the `experts`
    schedule does in guidance.run."""
    standard = tiny_pipeline("wan22").to(torch.float64)
    try:
        modular = modular_pipeline("wan22", standard)
    except LookupError as reason:
        pytest.skip(str(reason))
    spec = {"rule": "apg", "scale": 6.0, "policy": {"name": "adaptive", "threshold": 0.9},
            "terms": [PERTURBED["wan"]]}
    guider = guidance.as_guider(spec, scheduler=modular.scheduler)
    modular.update_components(guider=guider, guider_2=guider)
    got = modular_latents(modular, call_kwargs("wan22"))
    kwargs = call_kwargs_without_scales("wan22")
    expected = standard_latents("wan22", standard, guidance.run(standard, spec, **kwargs), kwargs)
    assert (got - expected).abs().max() <= 1e-5
    modular.update_components(guider=guidance.as_guider({"scale": 4.0}, scheduler=modular.scheduler),
                              guider_2=guidance.as_guider({"scale": 3.0}, scheduler=modular.scheduler))
    got = modular_latents(modular, call_kwargs("wan22"))
    kwargs = call_kwargs_without_scales("wan22")
    run = guidance.run(standard, {"scale": 4.0, "schedule": {"name": "experts", "scale_2": 3.0}}, **kwargs)
    assert (got - standard_latents("wan22", standard, run, kwargs)).abs().max() <= 1e-5


def test_cfg_equals_diffusers_guider(pipes) -> None:
    """Stock CFG as a guider equals diffusers' own ClassifierFreeGuidance guider in the same pipeline."""
    family, _, modular = pipes
    modular.update_components(guider=ClassifierFreeGuidance(guidance_scale=4.5))
    expected = modular_latents(modular, call_kwargs(family))
    modular.update_components(guider=guidance.as_guider({"scale": 4.5}, scheduler=modular.scheduler))
    assert (modular_latents(modular, call_kwargs(family)) - expected).abs().max() <= 1e-5


def test_adaptive_guidance_switches_per_sample(pipes) -> None:
    """AG with γ̄ between the two samples' first cosines: one sample switches off after the first step and keeps D_c
    while the other is still guided, as with guidance.run."""
    family, standard, _ = pipes
    stats: dict = {}
    guidance.run(standard, {"scale": 5.0}, stats=stats, **call_kwargs_without_scales(family))
    first = stats["steps"][0]["cosine"]
    spec = {"scale": 5.0, "policy": {"name": "adaptive", "threshold": sum(first) / len(first)}}
    stats = {}
    guidance.run(standard, spec, stats=stats, **call_kwargs_without_scales(family))
    assert [step["reference_rows"] for step in stats["steps"]][:2] == [2, 1]
    got, expected = run_both(pipes, spec)
    assert (got - expected).abs().max() <= 1e-5


def test_autoguidance_term_equals_run(pipes) -> None:
    """An autoguidance term with a weaker denoiser (the family's tiny one of another seed): its batch runs on that
    network, as guidance.run's rows do; the pipeline's denoiser keeps its own forward."""
    family, standard, modular = pipes
    weak = getattr(tiny_pipeline(family, seed=1), "unet" if family == "sdxl" else "transformer").to(torch.float64)
    spec = {"scale": 4.0, "terms": [{"reference": {"name": "autoguidance", "model": weak}, "scale": 1.5}]}
    got, expected = run_both(pipes, spec)
    assert (got - expected).abs().max() <= 1e-5
    assert (got - modular_run(pipes, {"scale": 4.0})).abs().max() > 1e-3
    denoiser = modular.unet if family == "sdxl" else modular.transformer
    assert "forward" not in vars(denoiser)


def test_linear_ag_estimates_as_with_run(pipes, tmp_path) -> None:
    """LinearAG fitted on the standard pipeline: the modular loop runs the conditional batch alone at the estimated
    and the unguided steps, and the estimate is guidance.run's."""
    family, standard, modular = pipes
    path = guidance.fit_linear_ag(standard, {"scale": 5.0}, tmp_path / "linear-ag.json",
                                  **{**call_kwargs_without_scales(family), "num_inference_steps": 6})
    spec = {"scale": 5.0, "policy": {"name": "linear_ag", "coefficients": str(path)}}
    stats: dict = {}
    expected = standard_latents(family, standard, guidance.run(
        standard, spec, stats=stats, **{**call_kwargs_without_scales(family), "num_inference_steps": 6}),
        call_kwargs(family))
    assert [step["branches"] for step in stats["steps"]][:2] == [["cond", "reference"], ["cond", "estimate"]]
    batches = []
    modular.update_components(guider=guidance.as_guider(spec, scheduler=modular.scheduler))
    count = modular.guider.prepare_models
    modular.guider.prepare_models = lambda denoiser: (batches.append(modular.guider._step), count(denoiser))
    got = modular_latents(modular, {**call_kwargs(family), "num_inference_steps": 6})
    assert [batches.count(i) for i in range(6)] == [2, 1, 2, 1, 1, 1]
    assert (got - expected).abs().max() <= 1e-5


def test_leaves_the_denoiser_as_it_was(pipes) -> None:
    """After a run with a perturbed term and tsg, the denoiser has no hooks of the guider and its modules are the
    same objects with the same attributes (the perturbations are undone after every batch)."""
    family, _, modular = pipes
    denoiser = modular.unet if family == "sdxl" else modular.transformer

    def snapshot() -> list:
        return [(name, id(module), {k: id(v) for k, v in vars(module).items()}, len(module._forward_pre_hooks),
                 len(module._forward_hooks)) for name, module in denoiser.named_modules()]

    before = snapshot()
    spec = {"scale": 4.0, "reference": "tsg", "terms": [PERTURBED[family]]}
    modular.update_components(guider=guidance.as_guider(spec, scheduler=modular.scheduler))
    modular_latents(modular, call_kwargs(family))
    assert snapshot() == before


def test_saved_guider_loads_equal(pipes, tmp_path) -> None:
    """The guider's config is the spec: saved and loaded (and made again from its config) it guides the same; loaded,
    it needs the scheduler again."""
    family, _, modular = pipes
    spec = {"rule": "apg", "scale": 6.0, "schedule": "cosine", "terms": [PERTURBED[family]]}
    got, expected = run_both(pipes, spec)
    guidance.as_guider(spec).save_pretrained(tmp_path)
    loaded = GuidanceGuider.from_pretrained(tmp_path)
    assert guidance.load(loaded.config["spec"]) == guidance.load(spec)
    modular.update_components(guider=loaded)
    with pytest.raises(GuidanceError, match="has no scheduler"):
        modular_latents(modular, call_kwargs(family))
    modular.update_components(guider=GuidanceGuider.from_config(loaded.config))
    modular.guider.scheduler = modular.scheduler
    assert (modular_latents(modular, call_kwargs(family)) - expected).abs().max() <= 1e-5
    assert (got - expected).abs().max() <= 1e-5


def test_modular_pipeline_saves_and_reloads_its_guider(tmp_path) -> None:
    """Loaded as a from_pretrained component, the guider is recorded in the modular pipeline's
    modular_model_index.json, and ModularPipeline.from_pretrained + load_components brings it back with its spec."""
    from diffusers.modular_pipelines import ComponentSpec, ModularPipeline

    spec = {"rule": "apg", "scale": 6.0, "terms": [PERTURBED["sdxl"]]}
    guidance.as_guider(spec).save_pretrained(tmp_path / "guider")
    where = ("pretrained_model_name_or_path" if "pretrained_model_name_or_path" in ComponentSpec.__dataclass_fields__
             else "repo")  # 0.35 names it repo
    component = ComponentSpec(name="guider", type_hint=GuidanceGuider, subfolder="guider",
                              **{where: str(tmp_path)}).load()
    modular = modular_pipeline("sdxl", tiny_pipeline("sdxl"))
    modular.update_components(guider=component)
    modular.save_pretrained(str(tmp_path / "pipeline"))
    reloaded = ModularPipeline.from_pretrained(str(tmp_path / "pipeline"))
    reloaded.load_components(names=["guider"])
    assert isinstance(reloaded.guider, GuidanceGuider)
    assert guidance.load(reloaded.guider.config["spec"]) == guidance.load(spec)


@pytest.mark.parametrize(("spec", "reason"), [
    ({"rule": "pcg"}, "corrector evaluates the denoiser again"),
    ({"terms": [{"reference": {"name": "gfcg", "classifier": "digits"}, "scale": 1.0}]}, "class-conditional"),
])
def test_refused_with_reason(spec: dict, reason: str) -> None:
    with pytest.raises(GuidanceError, match="cannot run as a diffusers guider") as error:
        guidance.as_guider(spec)
    assert reason in str(error.value)


def test_family_refusals(pipes) -> None:
    """What a family's loop cannot serve is refused at its first batch: PAG on Wan (no identity attention path, §27);
    on Qwen-Image, whose loop rescales the guided prediction to the conditional norm per token, CFG-Zero*'s zero-init
    (0/0) and CFG++ (no prediction carries its step through that rescale)."""
    family, _, modular = pipes
    refused = {"wan": [({"terms": [{"reference": "pag", "scale": 3.0}]}, "pag")],
               "qwenimage": [({"rule": "cfg_zero_star"}, "zero_init_steps: 0"),
                             ({"rule": "cfgpp"}, "no prediction carries CFG\\+\\+'s step")]}
    if family not in refused:
        pytest.skip(f"{family}'s modular loop serves every guider spec the standard pipeline serves")
    for spec, message in refused[family]:
        modular.update_components(guider=guidance.as_guider(spec, scheduler=modular.scheduler))
        with pytest.raises(GuidanceError, match=message):
            modular_latents(modular, call_kwargs(family))


def test_cfgpp_needs_a_single_step_scheduler() -> None:
    """DPM++ 2M keeps the previous prediction in the scheduler: CFG++'s step cannot be folded into one prediction."""
    from guidance.pipelines.schedulers import set_scheduler

    standard = set_scheduler(tiny_pipeline("sdxl"), "dpmpp_2m")
    modular = modular_pipeline("sdxl", standard)
    modular.update_components(guider=guidance.as_guider({"rule": "cfgpp"}, scheduler=modular.scheduler))
    with pytest.raises(GuidanceError, match="DPMSolverMultistepScheduler keeps earlier predictions"):
        modular_latents(modular, tiny_call_kwargs("sdxl", num_inference_steps=2))


def test_cfgpp_on_ddim_equals_run() -> None:
    """CFG++ on DDIM (the VP form of the folded step: A' = sqrt(ᾱ'), S' = sqrt(1 − ᾱ'))."""
    from guidance.pipelines.schedulers import set_scheduler

    standard = set_scheduler(tiny_pipeline("sdxl").to(torch.float64), "ddim")
    pipes = ("sdxl", standard, modular_pipeline("sdxl", standard))
    got, expected = run_both(pipes, {"rule": "cfgpp", "scale": 0.6})
    assert (got - expected).abs().max() <= 1e-5


def test_nag_is_refused_as_a_guider():
    with pytest.raises(GuidanceError, match="nag"):
        guidance.as_guider({"scale": 3.0, "attention": {"name": "nag", "scale": 3.0}})
