"""Procedural captioned scenes: the text-to-image reference data, generated (never downloaded), deterministic by seed.

Images are 32×32 RGB in [−1, 1], (N, 3, 32, 32) float32, each with a caption and the attributes it was drawn from.

The grammar (every caption is one of three forms; every word comes from the tables below):

    one       a {size} {colour} {shape} at the {position} on a {colour} background
    relation  a {size} {colour} {shape} {relation} a {size} {colour} {shape} on a {colour} background
    count     {count} {colour} {shape}s on a {colour} background

    size      small | large                       (half-extent 3 px | 6 px)
    colour    red | green | blue | yellow | white | black
    shape     circle | square | triangle          (a disc; an axis-aligned square; an upward isosceles triangle)
    position  top left | top | top right | left | center | right | bottom left | bottom | bottom right
              (a 3×3 grid of centres at 8, 16, 24 px, each jittered by up to ±0.5 px)
    relation  left of | right of | above | below
    count     two | three                         (count objects are small and share colour and shape)

Rules: the background colour differs from every object's colour; the two objects of a relation differ in shape or
colour, sit in the same row (left of, right of) or column (above, below), the first at the stated side's edge cell
(column or row 0 or 2) and the second at the opposite one; count objects sit in distinct grid cells. Shapes are
rendered with 4×4 supersampling (anti-aliased edges), so every pixel is a blend of the background and one object
colour.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import GuidanceError, shorten

SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 220, 50), "white": (240, 240, 240), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 3.0, "large": 6.0}
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CENTRES = (8, 16, 24)  # grid centres in pixels; position index = 3 · row + column
JITTER = 0.5
RELATIONS = ("left of", "right of", "above", "below")
COUNTS = {"two": 2, "three": 3}
KINDS = ("one", "relation", "count")
SUPERSAMPLE = 4
HELD_OUT_SEED = 1_000_000  # held-out scenes (judge checks, evaluation prompts) draw seeds from here up; training below


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its attributes, its grid cell (row, column) and its exact centre (x, y) in pixels."""

    shape: str
    colour: str
    size: str
    cell: tuple[int, int]
    centre: tuple[float, float]

    @property
    def position(self) -> str:
        return POSITIONS[3 * self.cell[0] + self.cell[1]]


@dataclass(frozen=True)
class Scene:
    """A scene's attributes: its kind (one of KINDS), background colour, objects and, for relations, the relation."""

    kind: str
    background: str
    objects: tuple[SceneObject, ...]
    relation: str | None = None


@dataclass
class Scenes:
    """A batch of rendered scenes: images (N, 3, 32, 32) float32 in [−1, 1], captions and attributes."""

    images: np.ndarray
    captions: list[str]
    scenes: list[Scene]


def vocabulary() -> list[str]:
    """Every word a caption can contain, sorted (a word-level tokenizer's vocabulary)."""
    words = {"a", "at", "the", "on", "background", "of"}
    for phrase in (*COLOURS, *SIZES, *POSITIONS, *RELATIONS, *COUNTS):
        words.update(phrase.split())
    for shape in SHAPES:
        words.update((shape, shape + "s"))
    return sorted(words)


def caption(scene: Scene) -> str:
    """The grammar's caption of a scene (module docstring)."""
    ground = f"on a {scene.background} background"
    first = scene.objects[0]
    if scene.kind == "one":
        return f"a {first.size} {first.colour} {first.shape} at the {first.position} {ground}"
    if scene.kind == "relation":
        second = scene.objects[1]
        return (f"a {first.size} {first.colour} {first.shape} {scene.relation} "
                f"a {second.size} {second.colour} {second.shape} {ground}")
    count = next(word for word, n in COUNTS.items() if n == len(scene.objects))
    return f"{count} {first.colour} {first.shape}s {ground}"


def _object(rng: np.random.Generator, shape: str, colour: str, size: str, cell: tuple[int, int]) -> SceneObject:
    x, y = (CENTRES[c] + rng.uniform(-JITTER, JITTER) for c in (cell[1], cell[0]))
    return SceneObject(shape, colour, size, cell, (float(x), float(y)))


def _pick(rng: np.random.Generator, options: tuple | list) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, kind: str) -> Scene:
    """One random scene of a kind, following the grammar's rules."""
    colours = tuple(COLOURS)
    if kind == "one":
        cell = divmod(int(rng.integers(9)), 3)
        objects = (_object(rng, _pick(rng, SHAPES), _pick(rng, colours), _pick(rng, tuple(SIZES)), cell),)
        relation = None
    elif kind == "relation":
        relation = _pick(rng, RELATIONS)
        while True:
            (s1, c1), (s2, c2) = ((_pick(rng, SHAPES), _pick(rng, colours)) for _ in range(2))
            if (s1, c1) != (s2, c2):
                break
        line, first_edge = int(rng.integers(3)), 0 if relation in ("left of", "above") else 2
        cells = [(line, first_edge), (line, 2 - first_edge)]
        if relation in ("above", "below"):
            cells = [(c, r) for r, c in cells]
        objects = (_object(rng, s1, c1, _pick(rng, tuple(SIZES)), cells[0]),
                   _object(rng, s2, c2, _pick(rng, tuple(SIZES)), cells[1]))
    elif kind == "count":
        relation, n = None, int(rng.integers(2, 4))
        shape, colour = _pick(rng, SHAPES), _pick(rng, colours)
        cells = rng.choice(9, size=n, replace=False)
        objects = tuple(_object(rng, shape, colour, "small", divmod(int(c), 3)) for c in cells)
    else:
        raise GuidanceError(f"Unknown scene kind {shorten(kind)}: the grammar has {', '.join(KINDS)}. Pass kinds "
                            "from that list.")
    used = {o.colour for o in objects}
    background = _pick(rng, [c for c in colours if c not in used])
    return Scene(kind, background, objects, relation)


def mislabel(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with one captioned attribute redrawn uniformly from the grammar's values (possibly the same one),
    for a caption that may no longer match the image, as web captions often do not: the first object's shape,
    colour, size (one-object and relation scenes) or position (one-object scenes), or the background. Only the
    caption is to be made from it; the grammar's colour rule may not hold."""
    first = scene.objects[0]
    choices = ["shape", "colour", "background", *["size"] * (scene.kind != "count"),
               *["position"] * (scene.kind == "one")]
    attribute = _pick(rng, choices)
    if attribute == "background":
        return replace(scene, background=_pick(rng, tuple(COLOURS)))
    if attribute == "position":
        changed = replace(first, cell=divmod(int(rng.integers(9)), 3))
    else:
        table = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES)}[attribute]
        changed = replace(first, **{attribute: _pick(rng, table)})
    if scene.kind == "count":  # count objects share shape and colour
        return replace(scene, objects=tuple(replace(o, shape=changed.shape, colour=changed.colour)
                                            for o in scene.objects))
    return replace(scene, objects=(changed, *scene.objects[1:]))


def _coverage(obj: SceneObject) -> np.ndarray:
    """The share of each pixel the object covers, (32, 32), from SUPERSAMPLE² points per pixel."""
    points = (np.arange(SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    y, x = np.meshgrid(points, points, indexing="ij")
    dx, dy, r = x - obj.centre[0], y - obj.centre[1], SIZES[obj.size]
    if obj.shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif obj.shape == "square":
        inside = (np.abs(dx) <= 0.9 * r) & (np.abs(dy) <= 0.9 * r)
    else:  # apex at (0, −r), base from (−r, r) to (r, r)
        inside = (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    return inside.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean((1, 3))


def render(scene: Scene) -> np.ndarray:
    """The scene's image, (3, 32, 32) float32 in [−1, 1]."""
    image = np.empty((SIZE, SIZE, 3))
    image[:] = COLOURS[scene.background]
    for obj in scene.objects:
        alpha = _coverage(obj)[..., None]
        image = (1 - alpha) * image + alpha * np.asarray(COLOURS[obj.colour], dtype=np.float64)
    return (image.transpose(2, 0, 1) / 127.5 - 1).astype(np.float32)


def generate(n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> Scenes:
    """`n` scenes, each of a kind drawn uniformly from `kinds`; the same seed gives the same scenes."""
    if n < 1 or not kinds:
        raise GuidanceError(f"Cannot generate {n} scenes of kinds {shorten(kinds)}: ask for at least one scene and at "
                            f"least one kind from {', '.join(KINDS)}.")
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, _pick(rng, kinds)) for _ in range(n)]
    return Scenes(np.stack([render(s) for s in scenes]), [caption(s) for s in scenes], scenes)


def one_object_targets(scenes: list[Scene]) -> dict[str, np.ndarray]:
    """Integer class labels of one-object scenes, per attribute: shape, colour, size, position, background."""
    if any(s.kind != "one" for s in scenes):
        raise GuidanceError("Attribute targets are defined for one-object scenes only; generate them with "
                            "kinds=('one',).")
    objects = [s.objects[0] for s in scenes]
    return {
        "shape": np.array([SHAPES.index(o.shape) for o in objects]),
        "colour": np.array([list(COLOURS).index(o.colour) for o in objects]),
        "size": np.array([list(SIZES).index(o.size) for o in objects]),
        "position": np.array([POSITIONS.index(o.position) for o in objects]),
        "background": np.array([list(COLOURS).index(s.background) for s in scenes]),
    }
