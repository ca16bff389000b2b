"""Guidance terms (docs/CONVENTIONS.md §20–27): g = main(c, r0, w) + Σ_k [rule_k(c, r_k, 1 + s_k) − c].

Checked against diffusers itself on the same components: its PAG pipelines (SD, SDXL, SD3, PixArt-Σ; also with
`pag_adaptive_scale` and without CFG) and SD3's own skip-layer guidance; and against hand-written computations (SEG's
blurred attention, autoguidance's DDIM loop). Also: one denoiser call per step for every row, terms off where s = 0,
the policy on the main term only, hooks restored exactly, combinations that work or are refused with a reason.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from diffusers import (
    KolorsPAGPipeline,
    PixArtSigmaPAGPipeline,
    SanaPAGPipeline,
    StableDiffusion3PAGPipeline,
    StableDiffusionPAGPipeline,
    StableDiffusionXLPAGPipeline,
)
from diffusers.models.attention_processor import Attention
from scipy import ndimage

import guidance
from guidance.pipelines.perturbations.base import RowDispatch, RowScope
from guidance.pipelines.perturbations.queries import blur_queries
from guidance.pipelines.testing.tiny import DISTILLED, FAMILIES, tiny_call_kwargs, tiny_pipeline

from conftest import output_tensor, strip_scales
from reference_loops import ddim_guided, sd_call, sd_inputs

PAG_PIPELINES = {"sd": (StableDiffusionPAGPipeline, ["mid"]), "sdxl": (StableDiffusionXLPAGPipeline, ["mid"]),
                 "sd3": (StableDiffusion3PAGPipeline, ["blocks.1"]),
                 "pixart_sigma": (PixArtSigmaPAGPipeline, ["blocks.1"]),
                 "sana": (SanaPAGPipeline, ["transformer_blocks.0"]), "kolors": (KolorsPAGPipeline, ["mid"])}


def pag_pipeline(family: str):
    """diffusers' PAG pipeline of `family` built from the tiny pipeline's own components."""
    pipe = tiny_pipeline(family)
    cls, layers = PAG_PIPELINES[family]
    accepted = inspect.signature(cls.__init__).parameters
    pag = cls(**{k: v for k, v in pipe.components.items() if k in accepted}, pag_applied_layers=layers)
    pag.set_progress_bar_config(disable=True)
    return pipe, pag, layers


def guided(pipe, family: str, spec: dict, stats: dict | None = None, steps: int = 4, **extra) -> torch.Tensor:
    kwargs = strip_scales(tiny_call_kwargs(family, batch=2, seed=1, num_inference_steps=steps))
    return output_tensor(guidance.run(pipe, spec, stats=stats, **kwargs, **extra))


def pag_term(layers, s: float = 3.0, **extra) -> dict:
    return {"reference": {"name": "pag", "layers": layers}, "scale": s, **extra}


@pytest.mark.parametrize("family", list(PAG_PIPELINES))
@pytest.mark.parametrize(("w", "s", "rate"), [(4.0, 3.0, 0.0), (4.0, 3.0, 0.005), (1.0, 3.0, 0.0)],
                         ids=["cfg+pag", "cfg+pag adaptive", "pag alone"])
def test_pag_term_equals_diffusers_pag_pipeline(family: str, w: float, s: float, rate: float) -> None:
    if family == "pixart_sigma" and rate:
        pytest.skip("diffusers 0.42's PixArtSigmaPAGPipeline fails with pag_adaptive_scale > 0 (it compares a "
                    "batch of timesteps with 0 in _get_pag_scale)")
    pipe, pag, layers = pag_pipeline(family)
    native = output_tensor(pag(**tiny_call_kwargs(family, batch=2, seed=1, guidance_scale=w), pag_scale=s,
                               pag_adaptive_scale=rate))
    schedule = {"name": "pag_adaptive", "rate": rate} if rate else "constant"
    stats: dict = {}
    got = guided(pipe, family, {"scale": w, "terms": [pag_term(layers, s, schedule=schedule)]}, stats)
    assert (got - native).abs().max() <= 1e-5
    assert (got - guided(pipe, family, {"scale": w})).abs().max() > 1e-2  # the term did something
    assert stats["steps"][0]["terms"][0]["name"] == "pag"


def test_pag_as_the_main_reference_is_d_c_plus_s_times_the_difference() -> None:
    """{scale: 1 + s, reference: pag} = D_c + s·(D_c − D_ptb) = {scale: 1, terms: [pag at s]} (§20)."""
    pipe = tiny_pipeline("sd")
    alone = guided(pipe, "sd", {"scale": 1.0, "terms": [pag_term(["mid"], 2.5)]})
    main = guided(pipe, "sd", {"scale": 3.5, "reference": {"name": "pag", "layers": ["mid"]}})
    assert (alone - main).abs().max() <= 1e-5


def slg_spec(layers=(1,), stop: float = 0.5) -> dict:
    return {"scale": 4.0, "terms": [{"reference": {"name": "slg", "layers": list(layers)}, "scale": 2.8,
                                     "schedule": {"name": "steps", "start": 0.01, "stop": stop}}]}


def test_slg_term_equals_sd3_skip_layer_guidance(row_counter) -> None:
    """SD3's own skip_guidance_layers (its block 1 here: the tiny transformer has 2) at scale 2.8 on steps
    0.01·N < i < 0.5·N equals an slg term with the `steps` schedule; the term's rows join the CFG call."""
    pipe = tiny_pipeline("sd3")
    native = pipe(**tiny_call_kwargs("sd3", batch=2, seed=1, guidance_scale=4.0, num_inference_steps=10),
                  skip_guidance_layers=[1], skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.01,
                  skip_layer_guidance_stop=0.5).images
    counter = row_counter(pipe)
    stats: dict = {}
    got = guided(pipe, "sd3", slg_spec(), stats, steps=10)
    assert (got - native).abs().max() <= 1e-5
    on = [0.01 * 10 < i < 0.5 * 10 for i in range(10)]
    assert counter.calls == [6 if active else 4 for active in on]  # one call per step; the term's 2 rows when on
    assert [len(step["terms"]) for step in stats["steps"]] == [int(active) for active in on]


def test_sd3_own_skip_layer_guidance_under_guidance_is_refused() -> None:
    """SD3's skip_guidance_layers would build its term from the guided output: refused, pointing at the slg term."""
    pipe = tiny_pipeline("sd3")
    kwargs = strip_scales(tiny_call_kwargs("sd3", batch=2, seed=1, num_inference_steps=6))
    with pytest.raises(guidance.GuidanceError, match="slg"):
        guidance.run(pipe, {"scale": 4.0}, skip_guidance_layers=[1], **kwargs)
    with pytest.raises(guidance.GuidanceError, match="slg"):
        with guidance.attach(pipe, {"scale": 4.0}):
            pipe(**kwargs, guidance_scale=2.0, skip_guidance_layers=[1], skip_layer_guidance_stop=0.9)


def test_every_term_joins_one_denoiser_call_per_step(row_counter) -> None:
    """CFG + pag + seg + tsg terms on SD: one forward per step over 2B + 3·B rows; each term recorded."""
    pipe = tiny_pipeline("sd")
    counter = row_counter(pipe)
    terms = [pag_term(["mid"]), {"reference": {"name": "seg", "layers": ["mid"], "blur_sigma": 1.0}, "scale": 2.0},
             {"reference": "tsg", "scale": 1.0}]
    stats: dict = {}
    guided(pipe, "sd", {"scale": 4.0, "terms": terms}, stats)
    assert counter.calls == [10] * 4 and stats["denoiser_rows"] == 40 and stats["denoiser_calls"] == 4
    assert [t["name"] for t in stats["steps"][0]["terms"]] == ["pag", "seg", "tsg"]
    assert all(len(t["cosine"]) == 2 for t in stats["steps"][0]["terms"])


def test_a_term_at_zero_evaluates_none_of_its_rows(row_counter) -> None:
    pipe = tiny_pipeline("sd")
    counter = row_counter(pipe)
    off = guided(pipe, "sd", {"scale": 4.0, "terms": [pag_term(["mid"], 0.0)]})
    assert counter.calls == [4] * 4
    assert (off - guided(pipe, "sd", {"scale": 4.0})).abs().max() == 0


def test_the_policy_acts_on_the_main_term_only(row_counter) -> None:
    """AG switched every sample off after its first step: the main reference's rows stop, the slg term's stay."""
    pipe = tiny_pipeline("sd3")
    counter = row_counter(pipe)
    spec = {"scale": 4.0, "policy": {"name": "adaptive", "threshold": -0.999},
            "terms": [{"reference": {"name": "slg", "layers": [1]}, "scale": 2.0}]}
    stats: dict = {}
    guided(pipe, "sd3", spec, stats)
    assert counter.calls == [6, 4, 4, 4]
    assert [s["branches"] for s in stats["steps"]][1:] == [["cond"]] * 3


def processors_and_forwards(pipe) -> dict:
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    return {name: (getattr(module, "processor", None), vars(module).get("forward"))
            for name, module in denoiser.named_modules()}


@pytest.mark.parametrize("fail", [False, True])
def test_perturbations_are_removed_exactly_also_on_error(fail: bool) -> None:
    pipe = tiny_pipeline("sd3")
    before = processors_and_forwards(pipe)
    spec = {"scale": 4.0, "terms": [pag_term(["blocks.0"]), {"reference": {"name": "slg", "layers": [1]}, "scale": 2.0},
                                    {"reference": {"name": "stg", "layers": [0], "mode": "attention"}, "scale": 1.0}]}
    if fail:
        def broken(pipeline, step, timestep, callback_kwargs):
            raise RuntimeError("user callback failed")

        with pytest.raises(RuntimeError, match="user callback"):
            guided(pipe, "sd3", spec, callback_on_step_end=broken)
    else:
        guided(pipe, "sd3", spec)
    after = processors_and_forwards(pipe)
    assert before.keys() == after.keys()
    assert all(before[k][0] is after[k][0] and before[k][1] is after[k][1] for k in before)


def test_identity_attention_equals_the_value_path() -> None:
    """PAG's perturbed rows of a self-attention module: to_out(to_v(x)) (SA = V), the other rows untouched."""
    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()
    x = torch.randn(3, 5, 8)
    plain = attn(x)
    scope, perturbation = RowScope(), type("P", (), {"rows": slice(2, 3)})()
    dispatch = RowDispatch(attn, "processor", scope)
    from guidance.pipelines.perturbations.attention import identity_attention

    dispatch.entries.append((perturbation, identity_attention))
    with scope.within(0, 3):
        got = attn(x)
    dispatch.restore()
    assert torch.allclose(got[:2], plain[:2], atol=1e-6)
    assert torch.allclose(got[2], attn.to_out[0](attn.to_v(x[2])), atol=1e-6)


def test_seg_blur_matches_an_independent_gaussian_filter() -> None:
    """The official kernel (⌈6σ⌉ + 1 made odd, reflect padding) = scipy's gaussian_filter truncated at that radius."""
    rng = np.random.default_rng(0)
    queries = torch.tensor(rng.normal(size=(2, 8 * 8, 3)))
    for sigma in (0.5, 1.0, 2.0):
        got = blur_queries(queries, sigma, (8, 8)).numpy()
        radius = min(math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2, 9) // 2  # the kernel is capped at 8 + 1
        image = queries.numpy().reshape(2, 8, 8, 3)
        expected = np.stack([ndimage.gaussian_filter(image[b, :, :, c], sigma, mode="mirror", truncate=radius / sigma)
                             for b in range(2) for c in range(3)]).reshape(2, 3, 8, 8).transpose(0, 2, 3, 1)
        np.testing.assert_allclose(got, expected.reshape(2, 64, 3), atol=1e-6)  # the official kernel is float32
    infinite = blur_queries(queries, 1e7, (8, 8))
    assert torch.allclose(infinite, queries.mean(dim=1, keepdim=True).expand_as(queries))


def test_seg_attention_equals_attention_with_blurred_queries_by_hand() -> None:
    """SEG's perturbed rows of a self-attention module: softmax(blur(Q)Kᵀ/√d)V through the output projection."""
    torch.manual_seed(1)
    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()
    x = torch.randn(2, 16, 8)
    spec = guidance.load({"reference": {"name": "seg", "layers": ["x"], "blur_sigma": 1.0}})
    from guidance.pipelines.perturbations.queries import BlurredQueries

    class OneLayer:
        def attention_layers(self, layers, method):
            return [attn]

    scope = RowScope()
    perturbation = BlurredQueries(spec.reference, OneLayer(), scope)
    perturbation.install({})
    perturbation.rows, perturbation.latent_size = slice(1, 2), (4, 4)
    with scope.within(0, 2), torch.no_grad():
        got = attn(x)
    perturbation.remove()
    with torch.no_grad():
        q = blur_queries(attn.to_q(x[1:]), 1.0, (4, 4)).view(1, 16, 2, 4).transpose(1, 2)
        k, v = (p(x[1:]).view(1, 16, 2, 4).transpose(1, 2) for p in (attn.to_k, attn.to_v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        expected = attn.to_out[0]((weights @ v).transpose(1, 2).reshape(1, 16, 8))
        assert torch.allclose(got[1:], expected, atol=1e-5)
        assert torch.allclose(got[:1], attn(x[:1]), atol=1e-6)


def test_autoguidance_equals_a_hand_written_ddim_loop() -> None:
    """CFG (w = 3) plus an autoguidance term (s = 1.5) with a weaker UNet: ε̂ = u + w(c − u) + s(c − weak(x, c))."""
    pipe = tiny_pipeline("sd")
    weak = tiny_pipeline("sd", seed=7).unet
    inputs = sd_inputs(pipe)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(5)
    timesteps = scheduler.timesteps

    def guide(i, x, c, u, a, s):
        weaker = weak(x, timesteps[i], encoder_hidden_states=inputs["pos"]).sample
        return u + 3.0 * (c - u) + 1.5 * (c - weaker)

    expected = ddim_guided(pipe, inputs, 5, guide)
    stats: dict = {}
    spec = {"scale": 3.0, "terms": [{"reference": {"name": "autoguidance", "model": weak}, "scale": 1.5}]}
    got = guidance.run(pipe, spec, stats=stats, **sd_call(inputs, 5)).images
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert stats["denoiser_calls"] == 10 and stats["denoiser_rows"] == 5 * (4 + 2)  # its own network, own call


@pytest.mark.parametrize("main", [{"rule": {"name": "apg", "eta": 0.0, "norm_threshold": 5.0}},
                                  {"policy": {"name": "adaptive", "threshold": 0.5}},
                                  {"rule": "cfg_zero_star"}, {"rule": "cfgpp", "scale": 0.5},
                                  {"schedule": "linear"}, {"reference": "icg"}],
                         ids=["apg", "adaptive", "cfg_zero_star", "cfgpp", "linear", "icg"])
@pytest.mark.parametrize("term", [{"reference": {"name": "pag", "layers": ["blocks.0"]}, "scale": 2.0},
                                  {"reference": {"name": "slg", "layers": [1]}, "scale": 2.8},
                                  {"reference": {"name": "seg", "layers": ["blocks.0"], "blur_sigma": 2.0},
                                   "scale": 2.0},
                                  {"reference": {"name": "stg", "layers": [0]}, "scale": 1.0}],
                         ids=["pag", "slg", "seg", "stg"])
def test_main_terms_combine_with_every_rule_policy_and_reference(main: dict, term: dict) -> None:
    """On SD3 (flow matching, joint attention): each combination runs, stays finite and differs from the main term
    alone; CFG++ renoises with the main reference (§26)."""
    pipe = tiny_pipeline("sd3")
    spec = {"scale": 4.0, **main}
    with_term = guided(pipe, "sd3", {**spec, "terms": [term]})
    assert torch.isfinite(with_term).all()
    assert (with_term - guided(pipe, "sd3", spec)).abs().max() > 1e-4


@pytest.mark.parametrize(("family", "reference", "message"), [
    ("sd", {"name": "slg", "layers": [1]}, "use pag or seg"),
    ("sd", {"name": "pag", "layers": ["nowhere"]}, "no self-attention layer"),
    ("sd3", {"name": "slg", "layers": [7]}, "outside"),
    ("flux", {"name": "pag"}, "no self-attention module"),
    ("flux", {"name": "seg", "layers": ["transformer_blocks.0"]}, "no self-attention module"),
    ("sd", {"name": "autoguidance", "model": "/no/such/folder"}, "no model at"),
    ("sd", {"name": "autoguidance", "model": "digits"}, "UNet2DConditionModel"),
])
def test_methods_that_do_not_fit_are_refused_with_the_reason(family: str, reference: dict, message: str) -> None:
    pipe = tiny_pipeline(family)
    with pytest.raises(guidance.GuidanceError, match=message):
        guided(pipe, family, {"scale": 3.0, "terms": [{"reference": reference, "scale": 1.0}]})


@pytest.mark.parametrize("family", ["flux", "qwenimage", "flux_kontext", "flux2_klein", "chroma", "lumina2"])
def test_separate_call_families_take_slg_terms_in_calls_of_their_own(family: str, row_counter) -> None:
    """Flux, Qwen-Image, Flux Kontext, FLUX.2 Klein, Chroma and Lumina 2 run the prompt and the negative prompt as
    separate calls of B rows: the term's B rows run in a call of their own (peak memory stays the pipeline's), and
    the term changes the result."""
    pipe = tiny_pipeline(family)
    counter = row_counter(pipe)
    out = guided(pipe, family, {"scale": 4.0, "terms": [{"reference": {"name": "slg", "layers": [1]}, "scale": 2.0}]})
    assert counter.calls == [2, 2, 2] * 4  # the conditional rows, the term's, the negative prompt's
    assert (out - guided(pipe, family, {"scale": 4.0})).abs().max() > 1e-4


def test_nested_perturbations_cut_their_own_rows() -> None:
    """An slg term skipping block 0 and a pag term on block 0's attention, in one call: with one flow step the
    output is linear in g, so the joint run's change equals the sum of each term's change alone (§21)."""
    pipe = tiny_pipeline("sd3")
    slg = {"reference": {"name": "slg", "layers": [0]}, "scale": 1.5}
    pag = pag_term(["blocks.0"], 2.0)

    def one_step(terms: list) -> torch.Tensor:
        return guided(pipe, "sd3", {"scale": 4.0, "terms": terms}, steps=1).double()

    main = one_step([])
    joint = one_step([slg, pag])
    assert torch.allclose(joint - main, (one_step([slg]) - main) + (one_step([pag]) - main), atol=1e-5)
    assert (joint - one_step([slg])).abs().max() > 1e-3


@pytest.mark.parametrize("family", [*FAMILIES, *DISTILLED])
@pytest.mark.parametrize("reference", ["pag", "seg", "slg", "stg"])
def test_every_family_has_defaults_or_a_clear_refusal(family: str, reference: str) -> None:
    """Each perturbed reference with its family default runs (finite, different from CFG alone) or is refused with a
    GuidanceError (defaults of real models index blocks a tiny model lacks; UNets have no block list; Flux no
    diffusers self-attention)."""
    pipe = tiny_pipeline(family)
    w = 1.0 if family in DISTILLED else 3.0  # a guidance-distilled family has no uncond branch: the term alone
    spec = {"scale": w, "terms": [{"reference": reference, "scale": 1.0}]}
    try:
        out = guided(pipe, family, spec)
    except guidance.GuidanceError as error:
        assert reference in str(error)
        return
    assert torch.isfinite(out).all() and (out - guided(pipe, family, {"scale": w})).abs().max() > 1e-4


def test_wan_video_takes_skipped_blocks_and_time_perturbation(row_counter) -> None:
    """Wan 2.1 (5-D video latents, separate calls): an slg term and a tsg term run in calls of their own."""
    pipe = tiny_pipeline("wan")
    counter = row_counter(pipe)
    spec = {"scale": 4.0, "terms": [{"reference": {"name": "slg", "layers": [1]}, "scale": 2.0},
                                    {"reference": "tsg", "scale": 1.0}]}
    out = guided(pipe, "wan", spec)
    assert out.ndim == 5 and torch.isfinite(out).all()
    assert counter.calls == [2, 2, 2, 2] * 4  # conditional, slg, tsg, negative: B rows per call as the pipeline's
    assert (out - guided(pipe, "wan", {"scale": 4.0})).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["sd3", "sd35"])
def test_joint_identity_attention_keeps_image_tokens_apart(family: str) -> None:
    """PAG on joint attention (SD3, SD3.5 with query/key norms): an image token attends to itself and the text only,
    so changing one image token leaves every other image token's output unchanged; text tokens see everything."""
    from guidance.pipelines.perturbations.attention import identity_attention

    attn = tiny_pipeline(family).transformer.transformer_blocks[0].attn
    generator = torch.Generator().manual_seed(3)
    hidden, text = torch.randn(1, 6, 16, generator=generator), torch.randn(1, 4, 16, generator=generator)
    changed = hidden.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        (image, context), (image2, context2) = (identity_attention(attn, h, text) for h in (hidden, changed))
    assert torch.allclose(image[:, 1:], image2[:, 1:], atol=1e-6)
    assert (image[:, 0] - image2[:, 0]).abs().max() > 1e-3 and (context - context2).abs().max() > 1e-3
