"""Small image helpers shared by the look-inside views (attention maps, feature maps, the
denoising filmstrip): a colormap, heat-map overlays, labelled grids, the filmstrip.

Only numpy and Pillow (no plotting library, and no torch: the web server renders with these);
the views of torch feature maps (PCA-to-RGB, channel grids) are in ``vgen.features``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchors of a perceptually ordered dark-to-bright map (close to matplotlib's "inferno").
_ANCHORS = np.array([
    [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
    [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164],
], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB of shape ``values.shape + (3,)``."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    pos = v * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    return rgb.round().astype(np.uint8)


def normalise01(a: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant array becomes zeros."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    if not math.isfinite(lo) or not math.isfinite(hi) or hi - lo < 1e-12:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def heat_image(values: np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
    """A [0, 1] map as a colored RGB image (resized to ``size`` = (W, H) if given)."""
    im = Image.fromarray(colormap(values))
    return im.resize(size, Image.BILINEAR) if size and im.size != tuple(size) else im


def overlay(image: Image.Image, values: np.ndarray, opacity: float = 0.6) -> Image.Image:
    """Blend a [0, 1] heat map over ``image``. The heat's alpha follows its value, so cold
    areas show the image and ``opacity`` is the alpha of the hottest pixel."""
    opacity = float(np.clip(opacity, 0.0, 1.0))
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = base.shape[:2]
    v = np.asarray(values, dtype=np.float32)
    if v.shape != (h, w):
        v = np.asarray(Image.fromarray(v).resize((w, h), Image.BILINEAR), dtype=np.float32)
    v = np.clip(v, 0.0, 1.0)
    heat = colormap(v).astype(np.float32)
    alpha = (opacity * (0.25 + 0.75 * v))[..., None]
    return Image.fromarray((base * (1 - alpha) + heat * alpha).round().astype(np.uint8))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def labelled(image: Image.Image, label: str, font_size: int = 12) -> Image.Image:
    """``image`` with ``label`` written in a strip above it."""
    strip = font_size + 6
    out = Image.new("RGB", (image.width, image.height + strip), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, strip))
    draw = ImageDraw.Draw(out)
    font = _font(font_size)
    text = label
    while text and draw.textlength(text, font=font) > image.width - 4:
        text = text[:-2] + "…" if len(text) > 2 else ""
    draw.text((2, 2), text, fill=(0, 0, 0), font=font)
    return out


def grid(cells: Sequence[Image.Image], labels: Sequence[str] | None = None, columns: int | None = None,
         cell_size: int | None = None, pad: int = 4) -> Image.Image:
    """Small multiples: ``cells`` (resized to ``cell_size`` on their longer side) in rows of
    ``columns``, each under its label."""
    if not cells:
        return Image.new("RGB", (1, 1), (255, 255, 255))
    if cell_size:
        cells = [c.resize(_fit(c.size, cell_size), Image.NEAREST if max(c.size) < cell_size else Image.BILINEAR)
                 for c in cells]
    if labels is not None:
        font_size = max(9, min(14, cells[0].width // 8))
        cells = [labelled(c, lab, font_size) for c, lab in zip(cells, labels)]
    columns = columns or min(len(cells), max(1, math.ceil(math.sqrt(len(cells)))))
    rows = math.ceil(len(cells) / columns)
    cw = max(c.width for c in cells)
    ch = max(c.height for c in cells)
    out = Image.new("RGB", (columns * cw + (columns + 1) * pad, rows * ch + (rows + 1) * pad), (255, 255, 255))
    for i, c in enumerate(cells):
        r, k = divmod(i, columns)
        out.paste(c.convert("RGB"), (pad + k * (cw + pad), pad + r * (ch + pad)))
    return out


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    w, h = size
    s = longest / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def filmstrip(frames: list[Image.Image], cell_size: int = 96, columns: int | None = None,
              labels: list[str] | None = None) -> Image.Image:
    """The frames side by side (one row unless ``columns``), labelled with their step numbers:
    the denoising path (``vgen.denoising``; ``Inspection.path[i]``)."""
    labels = labels or [f"step {i + 1}" for i in range(len(frames))]
    return grid(list(frames), labels, columns=columns or len(frames), cell_size=cell_size)
