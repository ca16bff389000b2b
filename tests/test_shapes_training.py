"""The captioned-scene text models' training script and the evaluation task that reads them: the text conditioning
the flow model trains on is what the stock SD3 pipeline feeds it, the autoencoder's weights single out the objects,
every stage runs and saves a pipeline the loader takes, and the task's prompts and targets agree (real scenes of
the prompts are judged right)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

import guidance
from guidance.app.config import ModelSection
from guidance.app.evaluate import Setting
from guidance.app.loading import load_model
from guidance.app.tasks import ScenesTask, negative_share
from guidance.app.train_shapes import (
    T5_ROWS,
    RepeatedRowAttention,
    build_flow_transformer,
    build_text_encoder,
    object_weights,
    sd3_text,
    train_autoencoder,
    train_flow,
    train_sd,
)
from guidance.pipelines.shapes import COLOURS, HELD_OUT_SEED, SHAPES, SIZES, _coverage, generate
from guidance.pipelines.shapes_text import word_tokenizer


def test_flow_text_conditioning_is_the_stock_pipelines() -> None:
    """sd3_text (what the flow model trains on) equals StableDiffusion3Pipeline.encode_prompt without T5."""
    torch.manual_seed(0)
    tokenizer = word_tokenizer()
    encoders = [build_text_encoder(tokenizer, width=32, projection=32) for _ in range(2)]
    pipe = StableDiffusion3Pipeline(transformer=build_flow_transformer(16, heads=2, layers=1), scheduler=None,
                                    vae=None, text_encoder=encoders[0], tokenizer=tokenizer,
                                    text_encoder_2=encoders[1], tokenizer_2=tokenizer, text_encoder_3=None,
                                    tokenizer_3=None)
    captions = ["a small red circle at the top left on a blue background", "", "two green squares on a white "
                "background"]
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(captions, None, None, do_classifier_free_guidance=False)
        ours, ours_pooled = sd3_text(encoders, tokenizer, captions, 64)
    assert T5_ROWS == 256 and embeds.shape == ours.shape == (3, 16 + T5_ROWS, 64)
    torch.testing.assert_close(ours, embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours_pooled, pooled, rtol=0, atol=0)


def test_flow_training_computes_the_stock_transformer_on_the_full_sequence() -> None:
    """One text row standing for the 256 T5 zero rows (RepeatedRowAttention) gives the stock transformer's output
    on the full sequence and the same gradients."""
    torch.manual_seed(0)
    tokenizer = word_tokenizer()
    encoders = [build_text_encoder(tokenizer, width=32, projection=32) for _ in range(2)]
    transformer = build_flow_transformer(16, heads=2, layers=3).double()
    with torch.no_grad():  # a non-zero context bias: the zero rows then differ from 0 from the first block on
        transformer.context_embedder.bias.normal_()
    captions = ["a small red circle at the top left on a blue background", ""]
    x, t = torch.randn(2, 16, 8, 8, dtype=torch.float64), torch.tensor([500.0, 20.0], dtype=torch.float64)

    def output_and_gradient(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            text, pooled = sd3_text(encoders, tokenizer, captions, 64, t5_rows=rows)
        transformer.zero_grad()
        out = transformer(hidden_states=x, timestep=t, encoder_hidden_states=text.double(),
                          pooled_projections=pooled.double()).sample
        out.square().sum().backward()
        return out.detach(), transformer.context_embedder.bias.grad.clone()

    full, full_gradient = output_and_gradient(T5_ROWS)
    transformer.set_attn_processor(RepeatedRowAttention(T5_ROWS))
    compressed, compressed_gradient = output_and_gradient(1)
    torch.testing.assert_close(compressed, full, rtol=0, atol=1e-10)
    torch.testing.assert_close(compressed_gradient, full_gradient, rtol=1e-9, atol=1e-9)
    transformer.set_attn_processor(RepeatedRowAttention(1))  # one zero row counted once: a different function
    assert (output_and_gradient(1)[0] - full).abs().max() > 1e-3


def test_autoencoder_weights_single_out_the_objects() -> None:
    """Weight 1 + w exactly where the renderer put some of an object (coverage above a blend the threshold sees)."""
    scenes = generate(40, seed=3)
    weights = object_weights(torch.from_numpy(scenes.images), 10.0)[:, 0].numpy()
    assert set(np.unique(weights)) <= {1.0, 11.0}
    for scene, weight in zip(scenes.scenes, weights, strict=True):
        coverage = np.max([_coverage(o) for o in scene.objects], axis=0)
        assert (weight[coverage >= 0.5] == 11).all()  # every pixel mostly inside an object
        assert (weight[coverage == 0] == 1).all()  # never a pixel no object touches


def test_training_stages_run_and_save_loadable_pipelines(tmp_path) -> None:
    """vae → sd and vae → flow, a few steps each on a few scenes: each saves its training record and a pipeline that
    the run-config loader takes (SD3's absent T5 included) and that guidance.run drives to a 32×32 image."""
    record = train_autoencoder(tmp_path / "vae", steps=2, scenes=64, check_scenes=16)
    assert 0 <= record["judge_on_reconstructions"]["all"] <= 1
    for train, kind, path in ((train_sd, StableDiffusionPipeline, "sd"),
                              (train_flow, StableDiffusion3Pipeline, "flow")):
        record = train(tmp_path / path, tmp_path / "vae", steps=2, scenes=64)
        assert record["steps"] == 2 and record["autoencoder_training"]["steps"] == 2
        pipe = load_model(ModelSection(path=str(tmp_path / path), device="cpu"))
        assert type(pipe) is kind
        assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id
        image = guidance.run(pipe, {"scale": 3.0}, prompt="a large red circle at the center on a blue background",
                             num_inference_steps=2, output_type="pt").images
        assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_scenes_task_reads_real_scenes_of_its_prompts_as_right() -> None:
    """Real scenes drawn from the same seed as the task's prompts: every attribute right, FD near the real floor;
    the same scenes in another order: adherence falls to chance agreement."""
    task = ScenesTask(200, seed=0)
    images = torch.from_numpy(generate(200, seed=HELD_OUT_SEED, kinds=("one",)).images)
    setting = Setting("real", {"scale": 1.0})
    right = task.measure(images, setting)
    assert right["accuracy"] == 1.0 and right["confidence"] > 0.95
    assert right["fd"] <= 2 * task.reference.floor
    shuffled = task.measure(images[torch.randperm(200, generator=torch.Generator().manual_seed(0))], setting)
    assert shuffled["accuracy"] < 0.05 and shuffled["fd"] == pytest.approx(right["fd"], rel=1e-6)


def test_negative_share_counts_objects_the_negative_prompt_names() -> None:
    read = {"colour": np.array([0, 1, 2, 0]), "shape": np.array([0, 0, 1, 2]), "size": np.array([0, 1, 0, 1])}
    assert list(COLOURS)[0] == "red" and SHAPES[1] == "square" and list(SIZES)[1] == "large"
    assert negative_share(read, "red") == 0.5  # images 0 and 3
    assert negative_share(read, "a red square") == 0.75  # and image 2 (a square)
    assert negative_share(read, "large") == 0.5
    assert np.isnan(negative_share(read, None))
