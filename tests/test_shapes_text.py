"""The captioned scenes' word tokenizer (the training script's smoke runs are in test_shapes_training.py)."""

from __future__ import annotations

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
