"""The embedded layout planner's text format: a shapes-world caption, then the layout of the scene
it describes, written so a word-level causal LM can write it.

A training text is ``<bos> CAPTION ; PHRASE [ x0 y0 x1 y1 ] PHRASE [ ... ] <eos>`` with each box
in whole pixels of the 64×64 image (the object's centre rounded to a pixel, its extent exact:
12 or 20 px). Objects come in the caption's order (its groups as ``captions.parse`` returns them;
within a group left to right), each phrase with its size ("a large red circle"). The planner is
prompted with ``<bos> CAPTION ;`` and continues with the layout; :func:`parse_plan_text` turns the
continuation into a :class:`vgen.layout.Layout` (boxes in fractions of the image) or raises
:class:`PlanParseError`, whose message shows the raw text.
"""

from __future__ import annotations

import re

from ..errors import InvalidRequestError, PlanParseError
from ..layout import Layout, LayoutObject
from . import captions, world
from .gligen import canonical_phrase

SEPARATOR = ";"
NUMBERS = [str(i) for i in range(world.IMAGE_SIZE + 1)]
PLANNER_WORDS = [SEPARATOR, "[", "]"] + NUMBERS
MAX_POSITIONS = 96  # caption (<= ~28 tokens) + ';' + 4 objects of <= 11 tokens, with room


def ordered_objects(caption: str, scene: world.Scene) -> list[world.Obj]:
    """The scene's objects in the caption's order: group by group as ``captions.parse`` lists
    them (a relation's subject first), within a group left to right."""
    left = list(scene.objects)
    out: list[world.Obj] = []
    for g in captions.parse(caption).groups:
        mine = [o for o in left if (o.color, o.shape) == (g.color, g.shape) and g.size in (None, o.size)]
        mine.sort(key=lambda o: (o.cx, o.cy))
        out += mine
        left = [o for o in left if o not in mine]
    return out + left


def pixel_box(o: world.Obj) -> tuple[int, int, int, int]:
    half = world.SIZES[o.size] // 2
    cx, cy = round(o.cx), round(o.cy)
    cx = min(max(cx, half), world.IMAGE_SIZE - half)
    cy = min(max(cy, half), world.IMAGE_SIZE - half)
    return (cx - half, cy - half, cx + half, cy + half)


def layout_text(caption: str, scene: world.Scene) -> str:
    """The layout part of a training text (after the separator)."""
    parts = []
    for o in ordered_objects(caption, scene):
        x0, y0, x1, y1 = pixel_box(o)
        parts.append(f"{canonical_phrase(o, with_size=True)} [ {x0} {y0} {x1} {y1} ]")
    return " ".join(parts)


def training_text(caption: str, scene: world.Scene) -> str:
    return f"{caption} {SEPARATOR} {layout_text(caption, scene)}"


def prompt_text(prompt: str) -> str:
    """What the planner is prompted with: the description, then the separator."""
    return f"{prompt.strip()} {SEPARATOR}"


_OBJECT = re.compile(r"([a-z ]+?)\s*\[\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\]")


def parse_plan_text(text: str, size: int = world.IMAGE_SIZE) -> Layout:
    """The planner's continuation (``PHRASE [ x0 y0 x1 y1 ] ...``, whole pixels) as a Layout."""
    raw = text
    body = text.strip()
    if not body:
        raise PlanParseError("the planner wrote no layout (raw output: '')", raw)
    objects = []
    pos = 0
    for m in _OBJECT.finditer(body):
        if body[pos:m.start()].strip():
            break
        phrase = " ".join(m.group(1).split())
        x0, y0, x1, y1 = (int(m.group(i)) / size for i in range(2, 6))
        try:
            objects.append(LayoutObject(phrase, (x0, y0, x1, y1)))
        except InvalidRequestError as e:
            raise PlanParseError(f"the planner wrote a bad object #{len(objects) + 1} ({e}); "
                                 f"raw output: {raw!r}", raw) from None
        pos = m.end()
    if not objects or body[pos:].strip():
        where = body[pos:].strip() or body
        raise PlanParseError(f"the planner's output is not a layout of 'phrase [ x0 y0 x1 y1 ]' "
                             f"objects (unparsable from {where[:60]!r}); raw output: {raw!r}", raw)
    return Layout(tuple(objects))


def layout_objects(layout: Layout) -> list[world.Obj] | None:
    """The layout read back as shapes-world objects (colour, shape and size from each phrase, the
    centre from its box; the size from the box's extent when the phrase has none), or None when a
    phrase is not a single shapes-world object."""
    objs = []
    for o in layout.objects:
        try:
            g = captions.parse(o.phrase).groups
        except Exception:
            return None
        if len(g) != 1 or g[0].count != 1:
            return None
        x0, y0, x1, y1 = o.pixel_box(world.IMAGE_SIZE, world.IMAGE_SIZE)
        size = g[0].size or ("large" if max(x1 - x0, y1 - y0) >= 16 else "small")
        objs.append(world.Obj(g[0].color, g[0].shape, size, (x0 + x1) / 2, (y0 + y1) / 2))
    return objs


def agrees(prompt: str, layout: Layout) -> tuple[bool, str]:
    """Does the layout agree with the prompt: every count, colour, shape and stated size, the
    relation or place (the analyzer's strict rule, on the layout's boxes instead of detections),
    and the boxes inside the image and apart (the world's minimum gap)?"""
    from .analyzer import Detected, check

    objs = layout_objects(layout)
    if objs is None:
        return False, "a phrase is not one shapes-world object"
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:
            if not world.boxes_clear(a.box, b.box, gap=0):
                return False, f"boxes overlap: {a.color} {a.shape} and {b.color} {b.shape}"
    area = {"small": 144.0, "large": 400.0}
    dets = sorted((Detected(o.color, o.shape, o.size, o.cx, o.cy, area[o.size], None) for o in objs),
                  key=lambda d: -d.area)
    try:
        description = captions.parse(prompt)
    except Exception as e:
        return False, f"prompt outside the shapes grammar: {e}"
    return check(description, dets)
