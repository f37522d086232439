"""A layout: the objects of a picture as (phrase, box) pairs, plus an optional background prompt.

This is what a planner writes (``vgen.plan``) and a grounded generator (GLIGEN, Li et al. 2023)
draws. A box is ``[x0, y0, x1, y1]`` in fractions of the image (0..1), origin top-left, y down
(GLIGEN's and diffusers' ``gligen_boxes`` convention). The JSON form, used by the CLI, the API
and the PNG metadata::

    {"objects": [{"phrase": "a red circle", "box": [0.1, 0.4, 0.4, 0.7]}, ...], "background": ""}

Every bad input raises :class:`vgen.errors.InvalidLayoutError` (an ``InvalidRequestError``,
so a ``ValueError``) whose message and ``field`` name the part that is wrong
(``objects[2].box[1]``). Torch-free: the app and the API validate a layout without loading a model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import InvalidLayoutError

MAX_OBJECTS = 30  # GLIGEN's limit (StableDiffusionGLIGENPipeline keeps the first 30 boxes)
MAX_PHRASE_CHARS = 200
MAX_BACKGROUND_CHARS = 2000
MAX_JSON_CHARS = 32_768  # 30 objects of the longest phrase fit with room to spare
_OBJECT_KEYS = ("phrase", "box")
_LAYOUT_KEYS = ("objects", "background")


def _fail(field: str, message: str) -> InvalidLayoutError:
    return InvalidLayoutError(f"layout {field}: {message}" if field else f"layout: {message}", field)


def _coordinate(value: Any, field: str) -> float:
    # bool is an int subclass; True is not a coordinate.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, f"must be a number from 0 to 1, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise _fail(field, f"must be from 0 to 1 (a fraction of the image), got {value!r}")
    return v


def _box(value: Any, field: str) -> tuple[float, float, float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _fail(field, f"must be a list [x0, y0, x1, y1], got {type(value).__name__}")
    if len(value) != 4:
        raise _fail(field, f"must have 4 numbers [x0, y0, x1, y1], got {len(value)}")
    x0, y0, x1, y1 = (_coordinate(v, f"{field}[{i}]") for i, v in enumerate(value))
    if x1 <= x0:
        raise _fail(field, f"x1 ({x1:g}) must be greater than x0 ({x0:g})")
    if y1 <= y0:
        raise _fail(field, f"y1 ({y1:g}) must be greater than y0 ({y0:g})")
    return (x0, y0, x1, y1)


def _text(value: Any, field: str, limit: int, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise _fail(field, f"must be text, got {type(value).__name__}")
    text = value.strip()
    if not text and not allow_empty:
        raise _fail(field, "must not be empty (say what the box holds, e.g. 'a red circle')")
    if len(text) > limit:
        raise _fail(field, f"must be at most {limit} characters, got {len(text)}")
    return text


@dataclass(frozen=True)
class LayoutObject:
    """One object: what it is (``phrase``) and where (``box``, fractions of the image)."""

    phrase: str
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "phrase", _text(self.phrase, "phrase", MAX_PHRASE_CHARS, False))
        object.__setattr__(self, "box", _box(self.box, "box"))

    def to_dict(self) -> dict:
        return {"phrase": self.phrase, "box": list(self.box)}

    def pixel_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 * width, y0 * height, x1 * width, y1 * height)


@dataclass(frozen=True)
class Layout:
    """The objects of a picture in boxes, and an optional background prompt ("" for none)."""

    objects: tuple[LayoutObject, ...]
    background: str = ""

    def __post_init__(self) -> None:
        objs = self.objects
        if isinstance(objs, (str, bytes, dict)) or not isinstance(objs, Iterable):
            raise _fail("objects", f"must be a list of objects, got {type(objs).__name__}")
        objs = tuple(objs)
        if len(objs) > MAX_OBJECTS:
            raise _fail("objects", f"at most {MAX_OBJECTS} objects (GLIGEN's limit), got {len(objs)}")
        for i, o in enumerate(objs):
            if not isinstance(o, LayoutObject):
                raise _fail(f"objects[{i}]", f"must be a LayoutObject, got {type(o).__name__}")
        object.__setattr__(self, "objects", objs)
        object.__setattr__(self, "background",
                           _text(self.background, "background", MAX_BACKGROUND_CHARS, True))

    # -- views --------------------------------------------------------------------------------
    @property
    def phrases(self) -> list[str]:
        return [o.phrase for o in self.objects]

    @property
    def boxes(self) -> list[list[float]]:
        """The boxes as ``gligen_boxes`` takes them."""
        return [list(o.box) for o in self.objects]

    def __len__(self) -> int:
        return len(self.objects)

    def rounded(self, digits: int = 3) -> "Layout":
        """The same layout with coordinates rounded (a planner's text; a table's cells)."""
        return Layout(tuple(LayoutObject(o.phrase, tuple(round(v, digits) for v in o.box))
                            for o in self.objects), self.background)

    # -- dict / JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects], "background": self.background}

    def to_json(self, indent: int | None = None) -> str:
        """The JSON form; ``Layout.from_json(layout.to_json()) == layout`` exactly (floats are
        written in their shortest round-tripping form)."""
        sep = (", ", ": ") if indent is None else None
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent, separators=sep)

    @classmethod
    def from_dict(cls, data: Any) -> "Layout":
        if not isinstance(data, dict):
            raise _fail("", f"must be a JSON object {{\"objects\": [...], \"background\": \"\"}}, "
                            f"got {type(data).__name__}")
        unknown = sorted(set(data) - set(_LAYOUT_KEYS), key=str)
        if unknown:
            raise _fail(str(unknown[0]), f"unknown field; a layout has {', '.join(_LAYOUT_KEYS)}")
        if "objects" not in data:
            raise _fail("objects", "missing (a list of {\"phrase\": ..., \"box\": [x0, y0, x1, y1]})")
        raw = data["objects"]
        if not isinstance(raw, list):
            raise _fail("objects", f"must be a list, got {type(raw).__name__}")
        if len(raw) > MAX_OBJECTS:
            raise _fail("objects", f"at most {MAX_OBJECTS} objects (GLIGEN's limit), got {len(raw)}")
        objects = []
        for i, item in enumerate(raw):
            f = f"objects[{i}]"
            if not isinstance(item, dict):
                raise _fail(f, f"must be an object {{\"phrase\": ..., \"box\": [...]}}, "
                               f"got {type(item).__name__}")
            extra = sorted(set(item) - set(_OBJECT_KEYS), key=str)
            if extra:
                raise _fail(f"{f}.{extra[0]}", f"unknown field; an object has {', '.join(_OBJECT_KEYS)}")
            for key in _OBJECT_KEYS:
                if key not in item:
                    raise _fail(f"{f}.{key}", "missing")
            phrase = _text(item["phrase"], f"{f}.phrase", MAX_PHRASE_CHARS, False)
            box = _box(item["box"], f"{f}.box")
            objects.append(LayoutObject(phrase, box))
        background = _text(data.get("background", ""), "background", MAX_BACKGROUND_CHARS, True)
        return cls(tuple(objects), background)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Layout":
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _fail("", f"JSON must be UTF-8 text ({e})") from None
        if not isinstance(text, str):
            raise _fail("", f"must be JSON text, got {type(text).__name__}")
        if len(text) > MAX_JSON_CHARS:
            raise _fail("", f"JSON must be at most {MAX_JSON_CHARS} characters, got {len(text)}")
        if not text.strip():
            raise _fail("", "empty JSON; expected {\"objects\": [...], \"background\": \"\"}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _fail("", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except RecursionError:
            raise _fail("", "JSON nested too deeply") from None
        return cls.from_dict(data)


def parse_layout(value: "Layout | dict | str | bytes | None") -> "Layout | None":
    """A layout from any of its forms (a Layout, its dict, its JSON); None and "" stay None."""
    if value is None or isinstance(value, Layout):
        return value
    if isinstance(value, (str, bytes)):
        return Layout.from_json(value) if value.strip() else None
    return Layout.from_dict(value)


def iou(a: Iterable[float], b: Iterable[float]) -> float:
    """Intersection over union of two boxes [x0, y0, x1, y1] (any units, the same for both)."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    w = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    h = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = w * h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0
