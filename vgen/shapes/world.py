"""The shapes world, spec v1: scenes of 1-4 flat-coloured shapes on a light background.

Every image of this world can be checked exactly (see ``analyzer.py``), which makes it a
GenEval-style benchmark (Ghosh et al. 2023, "GenEval: An Object-Focused Framework for
Evaluating Text-to-Image Alignment") whose detector makes no mistakes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SPEC_VERSION = 1
IMAGE_SIZE = 64
BACKGROUND = (240, 240, 240)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 205, 40),
    "green": (45, 165, 65),
    "cyan": (40, 185, 205),
    "blue": (45, 75, 215),
    "purple": (135, 60, 185),
    "pink": (240, 120, 175),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 12, "large": 20}  # pixels across
# Never in training images or captions: the test of compositional generalization.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("orange", "square"), ("cyan", "circle")}
)
MIN_GAP = 2  # pixels between any two objects
MAX_OBJECTS = 4
RELATION_MIN_OFFSET = 4  # centres must differ by this much for a relation to hold
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Obj:
    """One object; (cx, cy) is the centre of its bounding box in pixels, y pointing down."""

    color: str
    shape: str
    size: str
    cx: float
    cy: float

    @property
    def extent(self) -> int:
        return SIZES[self.size]

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.extent / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]


def combos(include_held_out: bool = False) -> list[tuple[str, str]]:
    """All (color, shape) pairs, without the held-out ones unless asked."""
    return [
        (c, s)
        for c in COLORS
        for s in SHAPES
        if include_held_out or (c, s) not in HELD_OUT
    ]


def boxes_clear(a: tuple[float, ...], b: tuple[float, ...], gap: float = MIN_GAP) -> bool:
    """True when two boxes are at least ``gap`` pixels apart along some axis."""
    return (
        a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
    )


def place_object(
    rng: random.Random, color: str, shape: str, size: str, others: list[Obj], tries: int = 200
) -> Obj | None:
    """Drop an object at a random spot fully inside the image and clear of ``others``."""
    half = SIZES[size] / 2
    for _ in range(tries):
        # Quarter-pixel grid: sub-pixel placement, still exactly reproducible.
        cx = round(rng.uniform(half, IMAGE_SIZE - half) * 4) / 4
        cy = round(rng.uniform(half, IMAGE_SIZE - half) * 4) / 4
        obj = Obj(color, shape, size, cx, cy)
        if all(boxes_clear(obj.box, o.box) for o in others):
            return obj
    return None


def sample_scene(
    rng: random.Random,
    n_objects: int | None = None,
    include_held_out: bool = False,
    repeat_prob: float = 0.3,
) -> Scene:
    """Sample a scene; with ``repeat_prob`` an object copies an earlier one's color and shape
    so that counting ("three red squares") is well represented."""
    allowed = combos(include_held_out)
    while True:
        n = n_objects or rng.randint(1, MAX_OBJECTS)
        objs: list[Obj] = []
        for _ in range(n):
            if objs and rng.random() < repeat_prob:
                color, shape = rng.choice([(o.color, o.shape) for o in objs])
            else:
                color, shape = rng.choice(allowed)
            size = rng.choice(tuple(SIZES))
            obj = place_object(rng, color, shape, size, objs)
            if obj is None:
                break
            objs.append(obj)
        if len(objs) == n:
            return Scene(tuple(objs))


def _polygon(obj: Obj, k: int) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = (v * k for v in obj.box)
    if obj.shape == "triangle":  # apex up, base at the bottom, as wide as tall
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, fill, k: int) -> None:
    if obj.shape == "circle":
        x0, y0, x1, y1 = (v * k for v in obj.box)
        # PIL's ellipse box is inclusive of the last pixel.
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        return
    poly = _polygon(obj, k)
    if obj.shape == "square":
        draw.rectangle([poly[0][0], poly[0][1], poly[2][0] - 1, poly[2][1] - 1], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def render(scene: Scene) -> Image.Image:
    """Draw a scene anti-aliased: at SUPERSAMPLE x, then box-filtered down (exact coverage)."""
    k = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * k, IMAGE_SIZE * k), BACKGROUND)
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        _draw(draw, obj, COLORS[obj.color], k)
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)


def coverage(obj: Obj) -> np.ndarray:
    """The fraction of each pixel the object covers, (64, 64) float in [0, 1], drawn exactly as
    ``render`` draws it."""
    k = SUPERSAMPLE
    big = Image.new("L", (IMAGE_SIZE * k, IMAGE_SIZE * k), 0)
    _draw(ImageDraw.Draw(big), obj, 255, k)
    return np.asarray(big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.float32) / 255.0


def render_array(scene: Scene) -> np.ndarray:
    return np.asarray(render(scene), dtype=np.uint8)  # (64, 64, 3)
