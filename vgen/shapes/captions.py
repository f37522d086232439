"""Caption grammar of the shapes world: scene -> varied, correct English, and back.

``describe`` writes a fresh random caption for a scene; ``parse`` turns any caption the grammar
can write into a :class:`Description` (what the caption claims), which the analyzer checks
against an image. Relations and places use the thresholds of ``world.py``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from ..errors import CaptionParseError
from .world import COLORS, IMAGE_SIZE, RELATION_MIN_OFFSET, SHAPES, Obj, Scene

COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4}
ARTICLES = ("a", "an")
SIZE_WORDS = {"small": "small", "large": "large", "big": "large"}
PLURALS = {s: s + "s" for s in SHAPES}
RELATIONS = {
    "to the left of": "left",
    "to the right of": "right",
    "above": "above",
    "below": "below",
}
PLACES = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
    "in the center": "center",
}
PREFIXES = ("", "", "", "a picture of ", "an image of ", "a drawing of ")
THIRD = IMAGE_SIZE / 3


@dataclass(frozen=True)
class Group:
    """``count`` objects of one color and shape; ``size`` is None when the caption omits it."""

    count: int
    color: str
    shape: str
    size: str | None = None


@dataclass(frozen=True)
class Description:
    """What a caption claims: groups, plus an optional relation between two single objects
    (``relation[0]`` is 'left'/'right'/'above'/'below', subject group 0, object group 1) or an
    optional place of a single object."""

    groups: tuple[Group, ...]
    relation: str | None = None
    place: str | None = None

    @property
    def n_objects(self) -> int:
        return sum(g.count for g in self.groups)

    def combos(self) -> Counter:
        c: Counter = Counter()
        for g in self.groups:
            c[(g.color, g.shape)] += g.count
        return c


def vocabulary() -> list[str]:
    """Every word the grammar can write (the embedded model's tokenizer vocabulary)."""
    words = set(COUNT_WORDS) | set(ARTICLES) | set(SIZE_WORDS) | set(COLORS) | set(SHAPES)
    words |= set(PLURALS.values()) | {"and", ","}
    for phrase in list(RELATIONS) + list(PLACES) + [p for p in PREFIXES if p]:
        words |= set(phrase.split())
    return sorted(words)


# ---- scene -> caption ----------------------------------------------------------------------

def relation_holds(a: Obj, b: Obj, rel: str, tolerance: float = 0.0) -> bool:
    """Spec v1: true when the centres differ by at least RELATION_MIN_OFFSET along that axis.
    ``tolerance`` (pixels, in the statement's favour) absorbs a detector's sub-pixel error."""
    d = RELATION_MIN_OFFSET - tolerance
    return {
        "left": b.cx - a.cx >= d,
        "right": a.cx - b.cx >= d,
        "above": b.cy - a.cy >= d,
        "below": a.cy - b.cy >= d,
    }[rel]


def place_holds(o: Obj, place: str, tolerance: float = 0.0) -> bool:
    """Places by thirds of the image (``tolerance`` as in ``relation_holds``)."""
    lo, hi = THIRD + tolerance, IMAGE_SIZE - THIRD - tolerance
    return {
        "left": o.cx < lo,
        "right": o.cx > hi,
        "top": o.cy < lo,
        "bottom": o.cy > hi,
        "center": THIRD - tolerance <= o.cx <= IMAGE_SIZE - THIRD + tolerance
        and THIRD - tolerance <= o.cy <= IMAGE_SIZE - THIRD + tolerance,
    }[place]


def group_phrase(rng: random.Random, g: Group) -> str:
    if g.count == 1:
        word = rng.choice(["a", "a", "one"])
    else:
        word = {v: k for k, v in COUNT_WORDS.items()}[g.count]
    parts = []
    if g.size is not None:
        parts.append("small" if g.size == "small" else rng.choice(["large", "big"]))
    parts += [g.color, g.shape if g.count == 1 else PLURALS[g.shape]]
    if word == "a" and parts[0][0] in "aeiou":
        word = "an"
    return " ".join([word] + parts)


def join_group_phrases(rng: random.Random, phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    sep = rng.choice([", ", ", ", " and "]) if len(phrases) > 2 else " and "
    if sep == " and ":
        return " and ".join(phrases)
    return ", ".join(phrases[:-1]) + rng.choice([" and ", ", and "]) + phrases[-1]


def groups_of(rng: random.Random, scene: Scene, size_prob: float = 0.5) -> list[Group]:
    """Group the objects by (color, shape); each group may state sizes (splitting by size
    where they differ) or leave them out."""
    by_combo: dict[tuple[str, str], list[Obj]] = {}
    for o in scene.objects:
        by_combo.setdefault((o.color, o.shape), []).append(o)
    groups = []
    for (color, shape), objs in by_combo.items():
        if rng.random() < size_prob:
            sizes = Counter(o.size for o in objs)
            groups += [Group(n, color, shape, s) for s, n in sizes.items()]
        else:
            groups.append(Group(len(objs), color, shape, None))
    rng.shuffle(groups)
    return groups


def describe(rng: random.Random, scene: Scene, extra_prob: float = 0.5) -> str:
    """A fresh random caption that describes every object of ``scene`` correctly."""
    objs = scene.objects
    prefix = rng.choice(PREFIXES)
    if len(objs) == 2 and rng.random() < extra_prob:
        a, b = objs if rng.random() < 0.5 else objs[::-1]
        true_rels = [p for p, r in RELATIONS.items() if relation_holds(a, b, r)]
        if true_rels:
            size_a = a.size if rng.random() < 0.5 else None
            size_b = b.size if rng.random() < 0.5 else None
            pa = group_phrase(rng, Group(1, a.color, a.shape, size_a))
            pb = group_phrase(rng, Group(1, b.color, b.shape, size_b))
            return f"{prefix}{pa} {rng.choice(true_rels)} {pb}"
    if len(objs) == 1 and rng.random() < extra_prob:
        o = objs[0]
        true_places = [p for p, r in PLACES.items() if place_holds(o, r)]
        if true_places:
            size = o.size if rng.random() < 0.5 else None
            return f"{prefix}{group_phrase(rng, Group(1, o.color, o.shape, size))} {rng.choice(true_places)}"
    phrases = [group_phrase(rng, g) for g in groups_of(rng, scene)]
    return prefix + join_group_phrases(rng, phrases)


# ---- caption -> description ----------------------------------------------------------------

def tokenize(text: str) -> list[str]:
    """Lower-case words, with commas as their own token."""
    return re.findall(r"[a-z]+|,", text.lower())


def _strip_prefix(words: list[str]) -> list[str]:
    for p in sorted({p for p in PREFIXES if p}, key=len, reverse=True):
        pw = p.split()
        if words[: len(pw)] == pw:
            return words[len(pw):]
    return words


def _parse_group(words: list[str]) -> Group:
    if not words:
        raise CaptionParseError("empty object phrase")
    head, rest = words[0], words[1:]
    if head in ARTICLES:
        count = 1
    elif head in COUNT_WORDS:
        count = COUNT_WORDS[head]
    else:
        raise CaptionParseError(f"expected a count ('a', 'one', 'two', ...), got {head!r}")
    size = None
    if rest and rest[0] in SIZE_WORDS:
        size, rest = SIZE_WORDS[rest[0]], rest[1:]
    if len(rest) != 2 or rest[0] not in COLORS:
        raise CaptionParseError(f"expected '[size] color shape' after {head!r}, got {' '.join(rest)!r}")
    color, noun = rest
    if count == 1 and noun in SHAPES:
        shape = noun
    elif count > 1 and noun in PLURALS.values():
        shape = noun[:-1]
    else:
        raise CaptionParseError(f"{noun!r} does not agree with count {count} (shapes: {', '.join(SHAPES)})")
    return Group(count, color, shape, size)


def find_phrase(words: list[str], phrases: dict[str, str]) -> tuple[int, int, str] | None:
    for phrase, value in phrases.items():
        pw = phrase.split()
        for i in range(len(words) - len(pw) + 1):
            if words[i : i + len(pw)] == pw:
                return i, i + len(pw), value
    return None


def parse(text: str) -> Description:
    """Parse a caption of the grammar into what it claims; raise CaptionParseError otherwise."""
    words = _strip_prefix(tokenize(text))
    if not words:
        raise CaptionParseError("empty description")
    rel = find_phrase(words, RELATIONS)
    if rel is not None:
        i, j, value = rel
        a, b = _parse_group(words[:i]), _parse_group(words[j:])
        if a.count != 1 or b.count != 1:
            raise CaptionParseError("a relation joins two single objects")
        return Description((a, b), relation=value)
    place = find_phrase(words, PLACES)
    if place is not None:
        i, j, value = place
        if j != len(words):
            raise CaptionParseError("a place comes at the end of the description")
        g = _parse_group(words[:i])
        if g.count != 1:
            raise CaptionParseError("a place describes a single object")
        return Description((g,), place=value)
    # Split on commas and "and" into object phrases.
    phrases: list[list[str]] = [[]]
    for w in words:
        if w in (",", "and"):
            if phrases[-1]:
                phrases.append([])
        else:
            phrases[-1].append(w)
    if not phrases[-1]:
        raise CaptionParseError("the description ends in a separator")
    groups = tuple(_parse_group(p) for p in phrases)
    if sum(g.count for g in groups) > 4:
        raise CaptionParseError("the shapes world has at most 4 objects")
    return Description(groups)


def description_of(scene: Scene) -> Description:
    """The full, sized description of a scene (ground truth for the analyzer)."""
    c = Counter((o.color, o.shape, o.size) for o in scene.objects)
    return Description(tuple(Group(n, col, sh, sz) for (col, sh, sz), n in c.items()))
