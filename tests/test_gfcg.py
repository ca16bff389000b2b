"""GFCG (Shenoy et al., arXiv 2411.15393) on the real digits model against a hand loop written from the method
(tests/reference_loops.py), alone and as a term next to CFG and autoguidance; its rows and calls; its refusals
(docs/CONVENTIONS.md §31)."""

from __future__ import annotations

import pytest
import torch

import guidance
from guidance.errors import GuidanceError
from guidance.pipelines.bundled import BUNDLED
from guidance.pipelines.digits import load_classifier, load_pipeline
from guidance.pipelines.testing.tiny import tiny_dit, tiny_sd

from reference_loops import digits_gfcg

STEPS = 4
LABELS = torch.tensor([1, 7, 3])


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def soft(classifier):
    """The digit classifier at temperature 20: on the digits model's estimates the plain classifier is so sure of the
    target (1 − p_y ≈ 1e-4) that GFCG would hardly guide; softened, every sample gets a scale well above 1."""
    return lambda images: classifier(images) / 20


def latents() -> torch.Tensor:
    return torch.randn((len(LABELS), 1, 16, 16), generator=torch.Generator().manual_seed(5))


def sample(pipe, spec: dict, stats: dict | None = None) -> torch.Tensor:
    return guidance.run(pipe, spec, stats=stats, class_labels=LABELS, latents=latents(), num_inference_steps=STEPS,
                        output_type="latent").images


def gfcg(classifier) -> dict:
    return {"name": "gfcg", "classifier": classifier}


def test_gfcg_matches_the_hand_loop(pipe, classifier) -> None:
    stats: dict = {}
    out = sample(pipe, {"scale": 4.0, "reference": gfcg(soft(classifier))}, stats)
    expected, chosen = digits_gfcg(pipe, soft(classifier), LABELS, latents(), STEPS, 4.0)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    conditional = sample(pipe, {"scale": 1.0})
    assert (expected - conditional).abs().max() > 0.05  # the guidance is there to be matched
    assert all(bool((c != LABELS).all()) for c in chosen)
    sample_w = torch.tensor([step["sample_w"] for step in stats["steps"]])
    assert bool(((sample_w > 1.5) & (sample_w < 4.0)).all())


@pytest.mark.parametrize("main", ["uncond", "autoguidance"])
def test_gfcg_term_next_to_cfg_and_autoguidance_matches_the_hand_loop(pipe, classifier, main: str) -> None:
    weak = type(pipe.unet).from_pretrained(BUNDLED["digits-weak"] / "unet").eval()
    reference = "uncond" if main == "uncond" else {"name": "autoguidance", "model": weak}
    spec = {"scale": 1.5, "reference": reference, "terms": [{"reference": gfcg(soft(classifier)), "scale": 2.0}]}
    out = sample(pipe, spec)
    expected, _ = digits_gfcg(pipe, soft(classifier), LABELS, latents(), STEPS, 1.5, main=main, s=2.0, weak=weak)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    without = sample(pipe, {"scale": 1.5, "reference": reference})
    assert (expected - without).abs().max() > 0.05


def test_a_bundled_classifier_by_name_is_the_digit_classifier(pipe, classifier) -> None:
    by_name = sample(pipe, {"scale": 20.0, "reference": gfcg("digits")})
    by_module = sample(pipe, {"scale": 20.0, "reference": gfcg(classifier)})
    assert torch.equal(by_name, by_module)
    expected, _ = digits_gfcg(pipe, classifier, LABELS, latents(), STEPS, 20.0)
    torch.testing.assert_close(by_name, expected, rtol=1e-4, atol=1e-4)


def test_gfcg_evaluates_the_conditional_rows_before_the_reference_rows(pipe, classifier, row_counter) -> None:
    """Two denoiser calls a step, B rows each: the reference rows need the conditional estimate first."""
    counter = row_counter(pipe)
    stats: dict = {}
    sample(pipe, {"scale": 3.0, "reference": gfcg(soft(classifier))}, stats)
    assert stats["denoiser_calls"] == 2 * STEPS
    assert stats["denoiser_rows"] == counter.rows == 2 * len(LABELS) * STEPS


def test_gfcg_refuses_a_text_conditioned_pipeline() -> None:
    with pytest.raises(GuidanceError, match="not conditioned on class labels.*digits pipeline, DiT"):
        guidance.run(tiny_sd(), {"reference": gfcg("digits")}, prompt="a cat", num_inference_steps=2)


@pytest.mark.parametrize(("spec", "message"), [
    ({"reference": gfcg("digits"), "policy": "adaptive"}, "cannot be skipped or estimated per sample.*policy: always"),
    ({"reference": gfcg("digits"), "rule": "cfgpp"}, "another class's prediction.*Use rule cfg or apg"),
    ({"reference": ["icg", gfcg("digits")]}, "'gfcg' cannot be combined"),
    ({"reference": {"name": "gfcg"}}, "classifier"),
    ({"reference": {"name": "gfcg", "classifier": 3}}, "bundled classifier's name"),
])
def test_gfcg_specs_that_do_not_compose_are_refused(spec: dict, message: str) -> None:
    with pytest.raises(GuidanceError, match=message):
        guidance.load(spec)


@pytest.mark.parametrize(("classifier", "message"), [
    ("mnist", "Unknown classifier 'mnist': the bundled ones are digits"),
    (lambda images: torch.zeros(len(images), 5), "scores 5 classes but the samples' labels go up to 7"),
    (lambda images: torch.zeros(len(images), 12), "scores 12 classes but the model has 10.*the model's classes"),
    (lambda images: torch.zeros(len(images)), r"returned \(3,\) for 3 samples.*logits of shape"),
])
def test_gfcg_refuses_a_classifier_that_does_not_fit(pipe, classifier, message: str) -> None:
    with pytest.raises(GuidanceError, match=message):
        sample(pipe, {"reference": gfcg(classifier)})


def test_gfcg_on_dit_classifies_the_latent_estimate_of_the_prediction_channels() -> None:
    """DiT's learned-variance channels are not part of x̂0: the classifier sees the latent estimate (4 channels)."""
    pipe = tiny_dit()
    classes = pipe.transformer.config.num_embeds_ada_norm
    seen: list[torch.Size] = []

    def classifier(x0: torch.Tensor) -> torch.Tensor:
        seen.append(x0.shape)
        return torch.zeros(len(x0), classes)

    stats: dict = {}
    guidance.run(pipe, {"scale": 3.0, "reference": gfcg(classifier)}, stats=stats, class_labels=[1, 2],
                 num_inference_steps=2, output_type="np")
    assert seen == [torch.Size([2, pipe.transformer.config.in_channels, 8, 8])] * 2
    assert stats["denoiser_rows"] == 2 * 2 * 2 and stats["denoiser_calls"] == 2 * 2
    assert stats["steps"][0]["sample_w"] == pytest.approx([1 + 2 * (1 - 1 / classes)] * 2)
