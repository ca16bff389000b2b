"""The captioned scenes' word tokenizer, and a smoke run of the text-to-image training script (a few steps on a
handful of scenes: the script works and its output loads in the stock pipeline; it says nothing about quality)."""

from __future__ import annotations

import json

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from guidance.app.train_shapes import train_text_to_image
from guidance.pipelines.shapes import generate, vocabulary
from guidance.pipelines.shapes_text import MAX_TOKENS, word_merges, word_tokenizer


def test_merges_are_byte_pair_encoding_on_the_words() -> None:
    # by hand: every pair occurs once, so ties go by the pair's order: (a, b) < (a, b</w>) < (ab, c</w>)
    assert word_merges(["ab", "abc"]) == [("a", "b"), ("a", "b</w>"), ("ab", "c</w>")]
    # "aa" twice outnumbers every other pair
    assert word_merges(["aab", "aac"])[0] == ("a", "a")


def test_every_word_is_one_token_and_captions_round_trip() -> None:
    tokenizer = word_tokenizer()
    ids = [tokenizer(word, add_special_tokens=False).input_ids for word in vocabulary()]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(vocabulary())
    for caption in generate(50, seed=0).captions:
        encoded = tokenizer(caption, padding="max_length", max_length=MAX_TOKENS, truncation=True).input_ids
        words = len(caption.split())
        assert encoded[0] == tokenizer.bos_token_id and encoded[words + 1:] == [tokenizer.eos_token_id] * (
            MAX_TOKENS - words - 1)
        assert tokenizer.decode(encoded, skip_special_tokens=True) == caption
    longest = "a large yellow triangle right of a large yellow triangle on a black background"
    assert len(tokenizer(longest).input_ids) == MAX_TOKENS


def test_text_to_image_script_saves_a_stock_pipeline(tmp_path) -> None:
    record = train_text_to_image(tmp_path, steps=2, vae_steps=2, scenes=8, batch=4, check_scenes=20, log_every=0)
    assert json.loads((tmp_path / "training.json").read_text()) == record
    assert {"steps", "vae_steps", "scenes", "seed", "caption_dropout", "wall_time_s", "device"} <= set(record)
    assert 0 <= record["judge_on_vae_reconstructions"]["all"] <= 1
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id
    out = pipe("a small red circle at the top left on a blue background", num_inference_steps=2, guidance_scale=3.0,
               output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()
