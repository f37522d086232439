"""Each layout object's phrase attention against its box (issue #22: "Features shows each box's
phrase attention"). Torch-free: the web server renders these from the unpickled maps.

For the :class:`~vgen.attention_maps.AttentionMaps` of a job drawn from a
:class:`~vgen.layout.Layout`, an object's map is the DAAM sum (Tang et al. 2022) of the prompt
words its phrase names, min-max normalised for display. Its **in-box share** is the fraction of
that (unnormalised) sum whose pixels lie in the object's box: ``sum(A * B) / sum(A)``, the
inside-box ratio of Chen et al. 2023 ("Training-Free Layout Control with Cross-Attention
Guidance") whose shortfall layout guidance (``vgen.layout_guidance``) minimises, here summed over
the phrase's words on the image grid. Compare it with the box's own share of the picture
(``area``): attention spread evenly over the picture scores exactly that.

Which prompt words a phrase names: its content words (``FUNCTION_WORDS`` such as "a", "two",
"and" name no object, as in layout guidance), plural spellings matching ("circle" and
"circles"). Where the prompt says the phrase's words together ("a red circle to the left of a
blue circle": "red circle"), that run of words is used, not every "circle" of the prompt; a
phrase word the prompt lacks is named in ``missing``, and an object none of whose words is in the
prompt gets no map (its note says so) rather than an empty one.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from . import viz
from .attention_maps import AttentionMaps
from .layout import Layout

# The same words vgen.layout_guidance leaves out (how many or which, not what); a test keeps the
# two lists equal (that module imports torch, this one must not).
FUNCTION_WORDS = frozenset("a an the one two three four five six seven eight nine ten and of "
                           "with some".split())
MIN_SIDE = 256  # px: an overlay is enlarged (whole factor, crisp) to at least this
BOX_RGB = (0, 229, 255)  # cyan: apart from every colour of the heat map (black-red-yellow)
WORD_GAP = 0.3  # a space as wide as 0.3 of the font size (Pillow's default font's is 0.19)


def _word(text: str) -> str:
    return text.lower().strip(string.punctuation + " ")


def content_words(phrase: str) -> list[str]:
    """The words of ``phrase`` that say what the object is (colour, shape, size...), in order."""
    words = [_word(w) for w in phrase.replace(",", " ").split()]
    return [w for w in words if w and w not in FUNCTION_WORDS]


def _forms(word: str) -> set[str]:
    return {word, word + "s", word + "es"}


def same_word(a: str, b: str) -> bool:
    """``a`` and ``b`` are one word, up to a plural ending (triangle, triangles; box, boxes)."""
    return b in _forms(a) or a in _forms(b)


def phrase_keys(word_keys: Sequence[str], phrase: str) -> tuple[list[str], list[str]]:
    """(the prompt's word keys ``"<i>:<word>"`` that ``phrase`` names, its content words the
    prompt lacks). Consecutive prompt words the phrase names form a run; the runs naming the
    most distinct phrase words are used (so "a red circle" takes "red circle", not also the
    "circle" of "a blue circle")."""
    wanted = content_words(phrase)
    words = [_word(k.split(":", 1)[1]) for k in word_keys]
    named = [{j for j, w in enumerate(wanted) if same_word(w, p)} if p not in FUNCTION_WORDS
             else set() for p in words]
    runs: list[list[int]] = []
    for i, hits in enumerate(named):
        if not hits:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    covers = [set().union(*(named[i] for i in run)) for run in runs]
    best = max((len(c) for c in covers), default=0)
    keys = [word_keys[i] for run, c in zip(runs, covers) if len(c) == best for i in run]
    present = set().union(*covers) if covers else set()
    missing = [w for j, w in enumerate(wanted) if j not in present]
    return keys, missing


def box_weights(box: Sequence[float], width: int, height: int) -> np.ndarray:
    """(height, width) float32: how much of each pixel the box covers (0..1; edge pixels in
    part), so a box's share does not jump by whole pixels on a 64-pixel picture."""
    x0, y0, x1, y1 = box

    def cover(lo: float, hi: float, n: int) -> np.ndarray:
        edges = np.arange(n + 1, dtype=np.float64)
        return np.clip(np.minimum(edges[1:], hi * n) - np.maximum(edges[:-1], lo * n), 0, 1)

    return np.outer(cover(y0, y1, height), cover(x0, x1, width)).astype(np.float32)


@dataclass(frozen=True)
class BoxMap:
    """One layout object's phrase attention: the words used (``keys``, word keys of the maps),
    the phrase's words the prompt lacks, the (H, W) map in [0, 1] (None: no word of the phrase
    is in the prompt), the in-box share of the attention and the box's share of the picture."""

    index: int  # the object's place in the layout, from 0
    phrase: str
    box: tuple[float, float, float, float]
    keys: tuple[str, ...]
    missing: tuple[str, ...]
    map: np.ndarray | None
    inside: float | None
    area: float

    @property
    def words(self) -> list[str]:
        return [k.split(":", 1)[1] for k in self.keys]

    def note(self) -> str:
        """What the figures say, in words (a caption)."""
        if self.map is None:
            return "none of its words is in the prompt: no map"
        text = f"{self.inside:.0%} of its attention inside the box (the box: {self.area:.0%})"
        return text + (f"; not in the prompt: {', '.join(self.missing)}" if self.missing else "")

    def to_dict(self) -> dict:
        """The figures as the ``/attention`` endpoint returns them (no map)."""
        return {"phrase": self.phrase, "box": list(self.box), "words": self.words,
                "missing": list(self.missing),
                "inside": None if self.inside is None else round(self.inside, 4),
                "box_area": round(self.area, 4)}


def box_maps(maps: AttentionMaps, layout: Layout, **filters) -> list[BoxMap]:
    """One :class:`BoxMap` per object of ``layout``, from ``maps`` filtered as
    ``AttentionMaps.maps`` is (``step_range``, ``resolutions``, ``kinds``, ``image_index``,
    ``normalize``)."""
    width, height = maps.image_size
    out = []
    for i, obj in enumerate(layout.objects):
        keys, missing = phrase_keys(maps.word_keys(), obj.phrase)
        weights = box_weights(obj.box, width, height)
        area = float(weights.sum()) / (width * height)
        if not keys:
            out.append(BoxMap(i, obj.phrase, obj.box, (), tuple(missing), None, None, area))
            continue
        total = maps.summed(keys, **filters).astype(np.float64)
        mass = float(total.sum())
        inside = float((total * weights).sum()) / mass if mass > 0 else 0.0
        out.append(BoxMap(i, obj.phrase, obj.box, tuple(keys), tuple(missing),
                          viz.normalise01(total), inside, area))
    return out


# ---- drawing --------------------------------------------------------------------------------

def label_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _font_size(font) -> float:
    return float(getattr(font, "size", 11))


def text_length(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    """The width :func:`draw_text` gives ``text``."""
    words = text.split(" ")
    gap = max(draw.textlength(" ", font=font), WORD_GAP * _font_size(font))
    return sum(draw.textlength(w, font=font) for w in words) + gap * (len(words) - 1)


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font,
              fill) -> None:
    """``text`` written word by word with a readable space: the default font's own space is so
    narrow that its words ran together ("asmall red circle")."""
    x, y = xy
    gap = max(draw.textlength(" ", font=font), WORD_GAP * _font_size(font))
    for word in text.split(" "):
        if word:
            draw.text((x, y), word, fill=fill, font=font)
        x += draw.textlength(word, font=font) + gap


def fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels as :func:`draw_text` writes it."""
    if text_length(draw, text, font) <= width:
        return text
    while text and text_length(draw, text + "…", font) > width:
        text = text[:-1]
    return text + "…"


def box_overlay(image: Image.Image, box_map: BoxMap, opacity: float = 0.6,
                min_side: int = MIN_SIDE) -> Image.Image:
    """The object's map over ``image`` (greyed, without heat, when it has none), enlarged to at
    least ``min_side`` pixels, with its box outlined and numbered and, below, the phrase and
    the figures."""
    picture = (viz.overlay(image, box_map.map, opacity) if box_map.map is not None
               else ImageOps.grayscale(image).convert("RGB"))
    factor = max(1, min_side // max(picture.size))
    picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    w, h = picture.size
    size = max(12, w // 18)
    font, line = label_font(size), size + 6
    lines = [f"{box_map.index + 1}  {box_map.phrase}", *_caption(box_map)]
    canvas = Image.new("RGB", (w, h + 6 + line * len(lines)), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = (round(v) for v in (box_map.box[0] * w, box_map.box[1] * h,
                                         box_map.box[2] * w - 1, box_map.box[3] * h - 1))
    thick = max(2, w // 110)
    # Dark hairlines on both sides keep the cyan edge visible on a light or a hot picture.
    draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(20, 20, 20), width=1)
    draw.rectangle([x0, y0, x1, y1], outline=BOX_RGB, width=thick)
    draw.rectangle([x0 + thick, y0 + thick, x1 - thick, y1 - thick], outline=(20, 20, 20), width=1)
    tag = str(box_map.index + 1)
    left, top, right, bottom = draw.textbbox((0, 0), tag, font=font)
    tw, th = right - left + 8, bottom - top + 6
    tx, ty = min(max(0, x0), w - tw), min(max(0, y0), h - th)
    draw.rectangle([tx, ty, tx + tw, ty + th], fill=BOX_RGB)
    draw.text((tx + 4 - left, ty + 3 - top), tag, fill=(0, 0, 0), font=font)
    for k, text in enumerate(lines):
        draw_text(draw, (6, h + 4 + k * line), fit_text(draw, text, font, w - 12), font,
                  (20, 20, 20))
    return canvas


def _caption(box_map: BoxMap) -> list[str]:
    area = f"the box: {box_map.area:.0%} of the picture"
    if box_map.map is None:
        return ["no word of it is in the prompt", area]
    lines = [f"{box_map.inside:.0%} of it inside the box", area,
             f"words: {', '.join(box_map.words)}"]
    if box_map.missing:
        lines.append(f"not in the prompt: {', '.join(box_map.missing)}")
    return lines
