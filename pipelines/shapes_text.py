"""The captioned scenes' tokenizer: a stock CLIPTokenizer built in memory (no files) whose tokens are the grammar's
words (shapes.vocabulary), one token per word, so that the text-to-image model's text encoder sees whole words.

CLIP's tokenizer is byte-pair encoding (Sennrich et al., ACL 2016) with an end-of-word suffix; its merges are learned
here by BPE on the vocabulary's words themselves, run until every word is a single symbol, so that applying them
(lowest rank first) rebuilds each word whole.
"""

from __future__ import annotations

from collections import Counter

from transformers import CLIPTokenizer

from .shapes import vocabulary

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 16  # the longest caption (a relation: 14 words) with its start and end tokens


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges learned on `words` (the most frequent pair first, ties by the pair's order) until each is one
    symbol; a word's symbols are its letters, the last with the suffix "</w>"."""
    pieces = [[*word[:-1], word[-1] + "</w>"] for word in words]
    merges = []
    while any(len(p) > 1 for p in pieces):
        counts = Counter(pair for p in pieces for pair in zip(p, p[1:], strict=False))
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        pieces = [_merge(p, best) for p in pieces]
    return merges


def word_tokenizer(words: list[str] | None = None) -> CLIPTokenizer:
    """A CLIPTokenizer whose vocabulary is the start and end tokens (the end token also pads), the letters and the
    merges of `words` (default: the grammar's); any word of `words` is one token."""
    words = vocabulary() if words is None else words
    merges = word_merges(words)
    symbols = sorted({c for w in words for c in w[:-1]} | {w[-1] + "</w>" for w in words})
    tokens = [BOS, EOS, *symbols, *dict.fromkeys(a + b for a, b in merges)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                         model_max_length=MAX_TOKENS)
