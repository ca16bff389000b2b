"""The procedural captioned scenes: the grammar's coverage, determinism, and that the pixels show what the caption
says (read back from the image by hand, independently of the renderer)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

from guidance.errors import GuidanceError
from guidance.pipelines.shapes import (
    COLOURS,
    COUNTS,
    KINDS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    generate,
    mislabel,
    one_object_targets,
    vocabulary,
)

WORD = "|".join
ONE = re.compile(rf"a ({WORD(SIZES)}) ({WORD(COLOURS)}) ({WORD(SHAPES)}) at the ({WORD(POSITIONS)}) "
                 rf"on a ({WORD(COLOURS)}) background")
RELATION = re.compile(rf"a ({WORD(SIZES)}) ({WORD(COLOURS)}) ({WORD(SHAPES)}) ({WORD(RELATIONS)}) "
                      rf"a ({WORD(SIZES)}) ({WORD(COLOURS)}) ({WORD(SHAPES)}) on a ({WORD(COLOURS)}) background")
COUNT = re.compile(rf"({WORD(COUNTS)}) ({WORD(COLOURS)}) ({WORD(SHAPES)})s on a ({WORD(COLOURS)}) background")


@pytest.fixture(scope="module")
def scenes():
    return generate(600, seed=0)


def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLOURS[name]) / 127.5 - 1


def _mask(image: np.ndarray, colour: str) -> np.ndarray:
    """Pixels of that colour (edge pixels blended with the background by anti-aliasing mostly excluded)."""
    return np.abs(image - _rgb(colour)[:, None, None]).max(0) < 0.1


def _pixel(image: np.ndarray, x: float, y: float) -> np.ndarray:
    return image[:, int(y), int(x)]


def test_every_caption_follows_the_grammar_and_uses_only_its_vocabulary(scenes) -> None:
    words = set(vocabulary())
    for text, scene in zip(scenes.captions, scenes.scenes, strict=True):
        pattern = {"one": ONE, "relation": RELATION, "count": COUNT}[scene.kind]
        assert pattern.fullmatch(text), text
        assert set(text.split()) <= words


def test_the_grammar_is_covered(scenes) -> None:
    text = " | ".join(scenes.captions)
    assert {s.kind for s in scenes.scenes} == set(KINDS)
    for word in (*COLOURS, *SHAPES, *SIZES, *RELATIONS, *COUNTS):
        assert f" {word} " in f" {text} ", word
    positions = {m.group(4) for m in map(ONE.fullmatch, scenes.captions) if m}
    assert positions == set(POSITIONS)
    backgrounds = {s.background for s in scenes.scenes}
    assert backgrounds == set(COLOURS)


def test_generation_is_deterministic_by_seed() -> None:
    a, b, c = generate(40, seed=3), generate(40, seed=3), generate(40, seed=4)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert a.captions != c.captions
    assert a.images.shape == (40, 3, 32, 32) and a.images.dtype == np.float32
    assert a.images.min() >= -1 and a.images.max() <= 1


def _blend(image: np.ndarray, colour: str, background: str) -> np.ndarray:
    """Each pixel's share of the object colour in a background/object blend, (32, 32)."""
    fg, bg = _rgb(colour), _rgb(background)
    return np.einsum("chw,c->hw", image - bg[:, None, None], fg - bg) / ((fg - bg) @ (fg - bg))


def _read_shape(alpha: np.ndarray) -> str:
    """The shape from the moments of its coverage: a triangle (apex up) is skewed downwards; a square's fourth moment
    is larger along the diagonal than along an axis (kurtosis 2.4 vs 1.8), a disc's is the same (2) both ways."""
    def mean(f: np.ndarray) -> float:
        return (alpha * f).sum() / alpha.sum()

    y, x = np.mgrid[:32, :32] + 0.5
    dx, dy = x - mean(x), y - mean(y)
    if mean(dy**3) / mean(dy**2) ** 1.5 < -0.3:
        return "triangle"
    u = (dx + dy) / np.sqrt(2)
    return "square" if mean(u**4) / mean(u**2) ** 2 - mean(dx**4) / mean(dx**2) ** 2 > 0.3 else "circle"


def test_one_object_pixels_show_the_caption(scenes) -> None:
    for image, text in zip(scenes.images, scenes.captions, strict=True):
        match = ONE.fullmatch(text)
        if not match:
            continue
        size, colour, shape, position, background = match.groups()
        assert np.allclose(image[:, 0, 0], _rgb(background), atol=1e-6), text  # no object reaches a corner
        alpha = _blend(image, colour, background)
        assert alpha.min() > -1e-5 and alpha.max() < 1 + 1e-5, text  # every pixel a blend of the two colours
        y, x = np.mgrid[:32, :32]
        row, col = ((alpha * g).sum() / alpha.sum() // (32 / 3) for g in (y, x))
        assert 3 * int(row) + int(col) == POSITIONS.index(position), text
        assert (alpha.sum() < 50) if size == "small" else (alpha.sum() > 50), text
        assert _read_shape(alpha) == shape, text


def test_relation_pixels_show_the_caption(scenes) -> None:
    for image, text, scene in zip(scenes.images, scenes.captions, scenes.scenes, strict=True):
        match = RELATION.fullmatch(text)
        if not match:
            continue
        _, colour_a, _, relation, _, colour_b, _, background = match.groups()
        a, b = scene.objects
        assert np.allclose(_pixel(image, *a.centre), _rgb(colour_a), atol=1e-6), text
        assert np.allclose(_pixel(image, *b.centre), _rgb(colour_b), atol=1e-6), text
        (xa, ya), (xb, yb) = a.centre, b.centre
        assert {"left of": xb - xa, "right of": xa - xb, "above": yb - ya, "below": ya - yb}[relation] > 14, text
        assert np.allclose(image[:, 0, 0], _rgb(background), atol=1e-6), text  # no object reaches a corner


def test_count_pixels_show_the_caption(scenes) -> None:
    seen = 0
    for image, text in zip(scenes.images, scenes.captions, strict=True):
        match = COUNT.fullmatch(text)
        if not match:
            continue
        count, colour, _, background = match.groups()
        assert ndimage.label(_mask(image, colour))[1] == COUNTS[count], text
        assert _mask(image, background).mean() > 0.8, text
        seen += 1
    assert seen > 100


def test_one_object_targets_index_the_grammar_tables() -> None:
    one = generate(30, seed=5, kinds=("one",))
    targets = one_object_targets(one.scenes)
    for i, text in enumerate(one.captions):
        size, colour, shape, position, background = ONE.fullmatch(text).groups()
        assert list(SIZES)[targets["size"][i]] == size
        assert list(COLOURS)[targets["colour"][i]] == colour and list(COLOURS)[targets["background"][i]] == background
        assert SHAPES[targets["shape"][i]] == shape and POSITIONS[targets["position"][i]] == position
    with pytest.raises(GuidanceError, match="one-object scenes only"):
        one_object_targets(generate(5, seed=0, kinds=("count",)).scenes)


def test_bad_requests_are_refused() -> None:
    with pytest.raises(GuidanceError, match="Unknown scene kind"):
        generate(3, kinds=("crowd",))
    with pytest.raises(GuidanceError, match="at least one scene"):
        generate(0)


def test_mislabel_redraws_one_captioned_attribute() -> None:
    """Each mislabelled scene differs from its scene in one attribute at most (count objects together), never in the
    kind, relation, second object or exact centres; over many scenes every attribute gets redrawn."""
    scenes = generate(600, seed=5)
    rng = np.random.default_rng(0)
    changed = set()
    for scene in scenes.scenes:
        other = mislabel(scene, rng)
        assert (other.kind, other.relation, other.objects[1:] if scene.kind == "relation" else ()) == \
            (scene.kind, scene.relation, scene.objects[1:] if scene.kind == "relation" else ())
        first, new = scene.objects[0], other.objects[0]
        diff = {name for name in ("shape", "colour", "size", "cell") if getattr(first, name) != getattr(new, name)}
        diff |= {"background"} if other.background != scene.background else set()
        assert len(diff) <= 1 and new.centre == first.centre
        if scene.kind == "count":
            assert {(o.shape, o.colour) for o in other.objects} == {(new.shape, new.colour)}
        changed |= diff
    assert changed == {"shape", "colour", "size", "cell", "background"}
