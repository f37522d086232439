"""Exact object detector and strict prompt scorer for the shapes world.

Detection is palette unmixing: each pixel is explained as ``alpha * color + (1 - alpha) *
background`` for the palette color that fits it best (anti-aliased edges are such mixtures),
pixels with ``alpha >= 0.5`` are labelled with that color, and 4-connected components of one
color are objects. A triangle is told by the skew of its mass (rows widen toward the base), a
square from a circle by how much of its box it fills (1 vs pi/4), size from the box's extent.
Scoring is GenEval's strict rule: the detected (color, shape) multiset equals the prompt's,
stated sizes match, the stated relation or place holds.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import CaptionParseError
from .captions import Description, parse, place_holds, relation_holds
from .world import BACKGROUND, COLORS, IMAGE_SIZE, SIZES, Obj

_NAMES = list(COLORS)
_BG = np.array(BACKGROUND, dtype=np.float32)
_DIRS = np.array([COLORS[n] for n in _NAMES], dtype=np.float32) - _BG  # (8, 3)
MIN_AREA = 20.0  # smaller blobs are noise, not objects (a small triangle covers 72 px)
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2
# Centres are measured to a few hundredths of a pixel; relations and places are judged with
# this much slack so a statement true by the spec is never failed by rounding.
TOLERANCE = 0.25


@dataclass(frozen=True)
class Detected:
    color: str
    shape: str
    size: str
    cx: float
    cy: float
    area: float
    mask: np.ndarray  # (64, 64) bool

    def as_obj(self) -> Obj:
        return Obj(self.color, self.shape, self.size, self.cx, self.cy)


@dataclass(frozen=True)
class Score:
    passed: bool
    reason: str
    detected: tuple[Detected, ...]


def _to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image, dtype=np.float32)
    if arr.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        pil = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.BOX
        )
        arr = np.asarray(pil, dtype=np.float32)
    return arr[..., :3]


def unmix(image: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the best-fitting palette color and its coverage alpha."""
    d = _to_array(image) - _BG  # (64, 64, 3)
    norms = (_DIRS**2).sum(1)  # (8,)
    alpha = np.clip(d @ _DIRS.T / norms, 0.0, 1.0)  # (64, 64, 8)
    resid = ((d[..., None, :] - alpha[..., None] * _DIRS) ** 2).sum(-1)  # (64, 64, 8)
    best = resid.argmin(-1)  # (64, 64)
    return best, np.take_along_axis(alpha, best[..., None], -1)[..., 0]


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as an (N, 2) array of (y, x)."""
    seen = np.zeros_like(mask)
    comps = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pix = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pix.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
        comps.append(np.array(pix))
    return comps


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def measure(coverage: np.ndarray) -> tuple[float, float, float]:
    """Sub-pixel width, height and area of one object from its coverage map (zero outside).

    A column's largest coverage is the fraction of that column the object spans, so their sum
    is the width (exact for squares, within a pixel for circles and triangles)."""
    return float(coverage.max(0).sum()), float(coverage.max(1).sum()), float(coverage.sum())


def box_centre(coverage: np.ndarray, shape: str, width: float) -> tuple[float, float]:
    """Centre of the object's bounding box, from its coverage-weighted centroid: the two agree
    for squares and circles; an apex-up triangle's centroid lies a sixth of its height below
    its box centre (its height equals its width)."""
    ys, xs = np.indices(coverage.shape)
    total = coverage.sum()
    cx = float((coverage * (xs + 0.5)).sum() / total)
    cy = float((coverage * (ys + 0.5)).sum() / total)
    if shape == "triangle":
        cy -= width / 6
    return cx, cy


def row_skewness(coverage: np.ndarray) -> float:
    """Skewness of the object's mass along y. An apex-up triangle's rows widen linearly toward
    its base (density 2y: skewness -0.57); circles and squares are symmetric (0). Unlike a fill
    ratio it needs no bounding box, so blur on a generated image barely moves it."""
    w = coverage.sum(1)  # (64,) mass per row
    y = np.arange(len(w)) + 0.5
    m = (w * y).sum() / w.sum()
    var = (w * (y - m) ** 2).sum() / w.sum()
    return float((w * (y - m) ** 3).sum() / w.sum() / max(var, 1e-6) ** 1.5)


def classify_shape(coverage: np.ndarray, width: float, height: float, area: float) -> str:
    """Triangle by its row skewness; square fills its box (1.0) where a circle fills pi/4."""
    if row_skewness(coverage) < -0.28:
        return "triangle"
    return "square" if area / max(width * height, 1e-6) > 0.89 else "circle"


def detect(image: Image.Image | np.ndarray) -> list[Detected]:
    """All objects in a shapes-world image, largest first."""
    best, alpha = unmix(image)
    fg = alpha >= 0.5
    found = []
    for ci, name in enumerate(_NAMES):
        for pix in _components(fg & (best == ci)):
            mask = np.zeros(fg.shape, dtype=bool)
            mask[pix[:, 0], pix[:, 1]] = True
            # Edge pixels under half coverage still belong to the object's area.
            coverage = np.where(_dilate(mask) & (best == ci), alpha, 0.0)
            width, height, area = measure(coverage)
            if area < MIN_AREA:
                continue
            size = "large" if max(width, height) >= SIZE_SPLIT else "small"
            shape = classify_shape(coverage, width, height, area)
            cx, cy = box_centre(coverage, shape, width)
            found.append(Detected(name, shape, size, float(cx), float(cy), area, mask))
    return sorted(found, key=lambda d: -d.area)


def check(description: Description, detected: list[Detected]) -> tuple[bool, str]:
    """GenEval-style strict check of detected objects against a description."""
    want = description.combos()
    got = Counter((d.color, d.shape) for d in detected)
    if want != got:
        return False, f"objects differ: wanted {dict(want)}, found {dict(got)}"
    sized = Counter((g.color, g.shape, g.size) for g in description.groups for _ in range(g.count) if g.size)
    have = Counter((d.color, d.shape, d.size) for d in detected)
    for key, n in sized.items():
        if have[key] < n:
            return False, f"wanted {n} {key[2]} {key[0]} {key[1]}, found {have[key]}"
    if description.relation:
        a, b = description.groups
        cands_a = [d for d in detected if (d.color, d.shape) == (a.color, a.shape) and a.size in (None, d.size)]
        cands_b = [d for d in detected if (d.color, d.shape) == (b.color, b.shape) and b.size in (None, d.size)]
        ok = any(
            x is not y and relation_holds(x.as_obj(), y.as_obj(), description.relation, TOLERANCE)
            for x in cands_a
            for y in cands_b
        )
        if not ok:
            return False, f"relation {description.relation!r} does not hold"
    if description.place and not place_holds(detected[0].as_obj(), description.place, TOLERANCE):
        return False, f"place {description.place!r} does not hold"
    return True, "ok"


def score(image: Image.Image | np.ndarray, prompt: str | Description) -> Score:
    """Strictly score an image against a shapes-world prompt."""
    try:
        description = parse(prompt) if isinstance(prompt, str) else prompt
    except CaptionParseError as e:
        return Score(False, f"prompt outside the shapes grammar: {e}", ())
    detected = detect(image)
    ok, reason = check(description, detected)
    return Score(ok, reason, tuple(detected))
