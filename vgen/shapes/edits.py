"""Instruction edits in the shapes world: (scene before, instruction, scene after) triples.

The training data of the embedded instruction editor (``train_edit.py``), built as Brooks et al.
2023 ("InstructPix2Pix: Learning to Follow Image Editing Instructions") built theirs, except that
here every pair is exact: the after-scene is rendered by the same renderer, so the edit is
known to the pixel and the analyzer can say whether a model made it (``check_edit``).

Six kinds of edit: recolor ("make the red circle blue"), add ("add a small yellow triangle at
the top"), remove ("remove the blue square"), move ("move the circle to the left"), reshape
("turn the triangle into a circle") and resize ("make the square bigger"). The edited object is
named by the fewest words that single it out (its color, its shape, or both; its size, then its
position among look-alikes, only when those are not enough). The world's held-out (color,
shape) pairs appear in no before- and no after-scene.

What an edit must produce is a :class:`EditCase`: the objects that must stay where they were
(within ``POSITION_TOLERANCE`` px, same color, shape and size) and, unless it is a removal, the
one object the instruction asks for (:class:`Expect`). Where the instruction leaves something
open (where an added object goes when no place is named, its size when none is stated, how far
a move goes) the check leaves it open too; ``after`` is one valid result, the training target.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, replace

import numpy as np

from . import world
from .captions import PLACES, place_holds, tokenize
from .world import COLORS, HELD_OUT, IMAGE_SIZE, RELATION_MIN_OFFSET, SHAPES, SIZES, Obj, Scene

KINDS = ("recolor", "add", "remove", "move", "reshape", "resize")
POSITION_TOLERANCE = 3.0  # px: how far an untouched object may drift and still count as kept
MIN_SHIFT = 8.0  # px: the least a training move shifts an object (the check asks for less)
# px: how far a training target moves an object when that fits (else a random shift that does).
# "Move it left" leaves the distance open, and a uniformly random one gave the model a target
# smeared over the whole row: at step 16500 its moves lost the object's size or went astray.
MOVE_SHIFT = 12.0
# A move counts when the object went at least this far the asked way (the world's own measure
# of "to the left of"), with the detector's sub-pixel slack in its favour, as relations are judged.
MIN_MOVE = RELATION_MIN_OFFSET - 0.25
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Which end of an axis a position word picks among look-alikes.
POSITIONS = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}

# ---- phrasing tables (every word an instruction can hold comes from these) -------------------
RECOLOR = ("make {ref} {color}", "turn {ref} {color}", "color {ref} {color}",
           "paint {ref} {color}", "change {ref} to {color}", "change the color of {ref} to {color}",
           "recolor {ref} {color}")
RESHAPE = ("turn {ref} into {a} {shape}", "make {ref} {a} {shape}", "change {ref} into {a} {shape}",
           "change {ref} to {a} {shape}", "change the shape of {ref} to {a} {shape}",
           "reshape {ref} into {a} {shape}")
GROW = ("make {ref} bigger", "make {ref} larger", "make {ref} big", "make {ref} large",
        "enlarge {ref}", "grow {ref}", "increase the size of {ref}")
SHRINK = ("make {ref} smaller", "make {ref} small", "shrink {ref}", "reduce the size of {ref}")
REMOVE = ("remove {ref}", "delete {ref}", "erase {ref}", "take away {ref}", "get rid of {ref}",
          "take out {ref}")
MOVE = {
    "left": ("move {ref} to the left", "move {ref} left", "shift {ref} to the left",
             "push {ref} left", "slide {ref} to the left"),
    "right": ("move {ref} to the right", "move {ref} right", "shift {ref} to the right",
              "push {ref} right", "slide {ref} to the right"),
    "up": ("move {ref} up", "shift {ref} up", "push {ref} up", "move {ref} upward",
           "slide {ref} up"),
    "down": ("move {ref} down", "shift {ref} down", "push {ref} down", "move {ref} downward",
             "slide {ref} down"),
}
ADD = ("add {obj}", "draw {obj}", "put {obj}", "insert {obj}", "add {obj} to the picture")
ADD_PLACED = ("add {obj} {place}", "draw {obj} {place}", "put {obj} {place}",
              "insert {obj} {place}", "place {obj} {place}")
COLOR_NOUNS = ("shape", "one", "object")  # "the red shape", "the red one"
POSITION_PREFIX = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
POSITION_MOST = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}
POSITION_SUFFIX = {"left": "on the left", "right": "on the right", "top": "at the top",
                   "bottom": "at the bottom"}
SIZE_WORDS = {"small": ("small",), "large": ("large", "big")}


def vocabulary() -> list[str]:
    """Every word an instruction can hold (the editor's tokenizer adds those it lacks)."""
    texts = [*RECOLOR, *RESHAPE, *GROW, *SHRINK, *REMOVE, *ADD, *ADD_PLACED, *COLOR_NOUNS,
             *POSITION_PREFIX.values(), *POSITION_MOST.values(), *POSITION_SUFFIX.values(),
             *PLACES, *COLORS, *SHAPES, "the a an", *(w for ws in SIZE_WORDS.values() for w in ws)]
    texts += [t for ts in MOVE.values() for t in ts]
    return sorted({w for t in texts for w in tokenize(re.sub(r"\{\w+\}", " ", t))})


# ---- data ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """How an instruction names an object: a color and/or a shape, optionally a size, and
    optionally a position ('left', 'right', 'top', 'bottom': the one furthest that way among
    the objects the rest of the description fits)."""

    color: str | None = None
    shape: str | None = None
    size: str | None = None
    position: str | None = None

    @property
    def contextual(self) -> bool:
        """Needs the size or a position: a look-alike of the object is in the scene."""
        return self.size is not None or self.position is not None


@dataclass(frozen=True)
class Expect:
    """The one object an edit must leave that was not there before: its color and shape, its
    size unless the instruction left it open (None), and where it must be: ``at`` (a centre,
    within POSITION_TOLERANCE), ``place`` (a place of the caption grammar) or ``moved``
    (the old centre and a direction of DIRECTIONS); none of them means anywhere."""

    color: str
    shape: str
    size: str | None
    at: tuple[float, float] | None = None
    place: str | None = None
    moved: tuple[float, float, str] | None = None

    def holds(self, o) -> bool:
        """Whether a detected (or drawn) object ``o`` is what was asked for."""
        if (o.color, o.shape) != (self.color, self.shape) or self.size not in (None, o.size):
            return False
        if self.at is not None and math.dist((o.cx, o.cy), self.at) > POSITION_TOLERANCE:
            return False
        if self.place is not None and not place_holds(_obj(o), self.place, 0.25):
            return False
        if self.moved is not None:
            x0, y0, direction = self.moved
            dx, dy = DIRECTIONS[direction]
            along = (o.cx - x0) * dx + (o.cy - y0) * dy
            across = abs((o.cx - x0) * dy) + abs((o.cy - y0) * dx)
            if along < MIN_MOVE or across > POSITION_TOLERANCE:
                return False
        return True

    def describe(self) -> str:
        where = (f" near ({self.at[0]:.1f}, {self.at[1]:.1f})" if self.at else
                 f" {self.place}" if self.place else
                 f" moved {self.moved[2]} from ({self.moved[0]:.1f}, {self.moved[1]:.1f})"
                 if self.moved else "")
        return f"{self.size or 'any-size'} {self.color} {self.shape}{where}"


@dataclass(frozen=True)
class EditCase:
    """One edit: the scene before, the instruction, one valid scene after (the training
    target), the objects that must stay put, the object that must appear (None: removal) and
    how the instruction named the object it changes (None: an addition)."""

    kind: str
    before: Scene
    instruction: str
    after: Scene
    kept: tuple[Obj, ...]
    changed: Expect | None
    ref: Ref | None = None


def _obj(o) -> Obj:
    return o if isinstance(o, Obj) else Obj(o.color, o.shape, o.size, o.cx, o.cy)


# ---- naming an object ---------------------------------------------------------------------------

def select(ref: Ref, objects: tuple[Obj, ...] | list[Obj]) -> list[Obj]:
    """The objects ``ref`` can mean. A position picks the one furthest that way, and only when
    it is at least RELATION_MIN_OFFSET px further than every other match (else nothing)."""
    found = [o for o in objects
             if ref.color in (None, o.color) and ref.shape in (None, o.shape)
             and ref.size in (None, o.size)]
    if ref.position is None or len(found) < 2:
        return found
    axis, sign = POSITIONS[ref.position]
    key = [sign * (o.cx, o.cy)[axis] for o in found]
    best = max(range(len(found)), key=key.__getitem__)
    if all(key[best] - k >= RELATION_MIN_OFFSET for i, k in enumerate(key) if i != best):
        return [found[best]]
    return []


def references(target: Obj, objects: tuple[Obj, ...]) -> list[Ref]:
    """The shortest ways to name ``target`` among ``objects`` unambiguously: color, shape or
    both; with the size added only when those fit more than one; with a position only when
    even that is not enough."""
    bases = [Ref(color=target.color), Ref(shape=target.shape),
             Ref(color=target.color, shape=target.shape)]
    for extra in ({}, {"size": target.size}):
        refs = [replace(b, **extra) for b in bases if select(replace(b, **extra), objects) == [target]]
        if refs:
            return refs
    refs = []
    for b in bases:
        for size in (None, target.size):
            for position in POSITIONS:
                r = replace(b, size=size, position=position)
                if select(r, objects) == [target]:
                    refs.append(r)
    return refs


def ref_text(rng: random.Random, ref: Ref, objects: tuple[Obj, ...],
             nouns: tuple[str, ...] = COLOR_NOUNS) -> str:
    """English for a reference: 'the circle', 'the red one', 'the small red circle',
    'the red circle on the left', 'the leftmost square'. ``nouns``: what a reference by color
    alone calls the object."""
    words = ["the"]
    suffix = ""
    if ref.position is not None:
        lookalikes = len(select(replace(ref, position=None), objects))
        form = rng.choice(("most",) if lookalikes > 2 or ref.size else ("prefix", "suffix", "most"))
        if form == "most":
            words.append(POSITION_MOST[ref.position])
        elif form == "prefix":
            words.append(POSITION_PREFIX[ref.position])
        else:
            suffix = " " + POSITION_SUFFIX[ref.position]
    if ref.size is not None:
        words.append(rng.choice(SIZE_WORDS[ref.size]))
    if ref.color is not None:
        words.append(ref.color)
    words.append(ref.shape if ref.shape is not None else rng.choice(nouns))
    return " ".join(words) + suffix


def _name(rng: random.Random, target: Obj, objects: tuple[Obj, ...],
          nouns: tuple[str, ...] = COLOR_NOUNS) -> tuple[str, Ref]:
    ref = rng.choice(references(target, objects))
    return ref_text(rng, ref, objects, nouns), ref


def _pick(rng: random.Random, scene: Scene) -> Obj | None:
    """A random object that can be named unambiguously (the middle one of three look-alikes
    in a diagonal row cannot: it is neither leftmost nor topmost ...)."""
    nameable = [o for o in scene.objects if references(o, scene.objects)]
    return rng.choice(nameable) if nameable else None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ---- placing objects ----------------------------------------------------------------------------

def fits(obj: Obj, others) -> bool:
    """Fully inside the image and at least MIN_GAP px clear of every other object."""
    x0, y0, x1, y1 = obj.box
    return (x0 >= 0 and y0 >= 0 and x1 <= IMAGE_SIZE and y1 <= IMAGE_SIZE
            and all(world.boxes_clear(obj.box, o.box) for o in others))


def _place(rng: random.Random, color: str, shape: str, size: str, others, place: str | None,
           tries: int = 200) -> Obj | None:
    for _ in range(tries):
        o = world.place_object(rng, color, shape, size, list(others), tries=1)
        if o is not None and (place is None or place_holds(o, place)):
            return o
    return None


def _without(objects: tuple[Obj, ...], target: Obj) -> tuple[Obj, ...]:
    i = objects.index(target)
    return objects[:i] + objects[i + 1:]


# ---- the six kinds --------------------------------------------------------------------------------

def _recolor(rng: random.Random, scene: Scene) -> EditCase | None:
    target = _pick(rng, scene)
    if target is None:
        return None
    colors = [c for c in COLORS if c != target.color and (c, target.shape) not in HELD_OUT]
    color = rng.choice(colors)
    name, ref = _name(rng, target, scene.objects)
    text = rng.choice(RECOLOR).format(ref=name, color=color)
    new = replace(target, color=color)
    kept = _without(scene.objects, target)
    return EditCase("recolor", scene, text, Scene(kept + (new,)), kept,
                    Expect(color, target.shape, target.size, at=(target.cx, target.cy)), ref)


def _reshape(rng: random.Random, scene: Scene) -> EditCase | None:
    target = _pick(rng, scene)
    if target is None:
        return None
    shapes = [s for s in SHAPES if s != target.shape and (target.color, s) not in HELD_OUT]
    shape = rng.choice(shapes)
    # "the red one", not "the red shape": "change the shape of the red shape" reads badly.
    name, ref = _name(rng, target, scene.objects, nouns=("one", "object"))
    text = rng.choice(RESHAPE).format(ref=name, a=_article(shape), shape=shape)
    new = replace(target, shape=shape)  # the same box: a triangle's box centre, as drawn
    kept = _without(scene.objects, target)
    return EditCase("reshape", scene, text, Scene(kept + (new,)), kept,
                    Expect(target.color, shape, target.size, at=(target.cx, target.cy)), ref)


def _resize(rng: random.Random, scene: Scene) -> EditCase | None:
    target = _pick(rng, scene)
    if target is None:
        return None
    size = "small" if target.size == "large" else "large"
    new = replace(target, size=size)  # grown or shrunk about its centre
    kept = _without(scene.objects, target)
    if not fits(new, kept):
        return None
    table = GROW if size == "large" else SHRINK
    name, ref = _name(rng, target, scene.objects)
    text = rng.choice(table).format(ref=name)
    return EditCase("resize", scene, text, Scene(kept + (new,)), kept,
                    Expect(target.color, target.shape, size, at=(target.cx, target.cy)), ref)


def _remove(rng: random.Random, scene: Scene) -> EditCase | None:
    if len(scene.objects) < 2:  # a scene holds 1-4 objects; an empty one is outside the world
        return None
    target = _pick(rng, scene)
    if target is None:
        return None
    name, ref = _name(rng, target, scene.objects)
    text = rng.choice(REMOVE).format(ref=name)
    kept = _without(scene.objects, target)
    return EditCase("remove", scene, text, Scene(kept), kept, None, ref)


def _move(rng: random.Random, scene: Scene) -> EditCase | None:
    target = _pick(rng, scene)
    if target is None:
        return None
    kept = _without(scene.objects, target)
    direction = rng.choice(tuple(DIRECTIONS))
    dx, dy = DIRECTIONS[direction]
    half = target.extent / 2
    pos = target.cx if dx else target.cy
    room = (pos - half) if (dx + dy) < 0 else (IMAGE_SIZE - half - pos)
    if room < MIN_SHIFT:
        return None
    for _ in range(50):
        shift = round(rng.uniform(MIN_SHIFT, room) * 4) / 4  # quarter-pixel grid, as placed
        new = replace(target, cx=target.cx + dx * shift, cy=target.cy + dy * shift)
        if fits(new, kept):
            break
    else:
        return None
    # The target: the usual shift where it fits. Drawn after the random one, so the cases (and
    # the seeded evaluation sets, which only check the direction) are the ones drawn before.
    shift = min(MOVE_SHIFT, math.floor(room * 4) / 4)  # on the quarter-pixel grid, inside
    usual = replace(target, cx=target.cx + dx * shift, cy=target.cy + dy * shift)
    if fits(usual, kept):
        new = usual
    name, ref = _name(rng, target, scene.objects)
    text = rng.choice(MOVE[direction]).format(ref=name)
    return EditCase("move", scene, text, Scene(kept + (new,)), kept,
                    Expect(target.color, target.shape, target.size,
                           moved=(target.cx, target.cy, direction)), ref)


PLACED_ADDS = 0.6  # the share of adds that say where ("... on the left"); the eval's share


def _add(rng: random.Random, scene: Scene, placed: float = PLACED_ADDS) -> EditCase | None:
    if len(scene.objects) >= world.MAX_OBJECTS:
        return None
    color, shape = rng.choice(world.combos())
    size = rng.choice(tuple(SIZES))
    place = rng.choice(tuple(PLACES)) if rng.random() < placed else None
    new = _place(rng, color, shape, size, scene.objects, PLACES.get(place))
    if new is None:
        return None
    stated = size if rng.random() < 0.6 else None
    adjectives = ([rng.choice(SIZE_WORDS[stated])] if stated else []) + [color]
    obj = " ".join([_article(adjectives[0]), *adjectives, shape])
    text = (rng.choice(ADD_PLACED).format(obj=obj, place=place) if place
            else rng.choice(ADD).format(obj=obj))
    return EditCase("add", scene, text, Scene(scene.objects + (new,)), scene.objects,
                    Expect(color, shape, stated, place=PLACES.get(place)))


_BUILDERS = {"recolor": _recolor, "add": _add, "remove": _remove, "move": _move,
             "reshape": _reshape, "resize": _resize}


def sample_case(rng: random.Random, kind: str | None = None,
                kind_weights: dict[str, float] | None = None, hard_refs: float = 0.0,
                placed_adds: float = PLACED_ADDS) -> EditCase:
    """A fresh edit of ``kind`` on a fresh scene; with no ``kind``, one drawn in proportion to
    ``kind_weights`` (missing kinds weigh 1; None: uniformly). ``hard_refs``: how often an edit
    that names an object is redrawn until the name needs the object's size or position
    (``Ref.contextual``; about 30 % are so by chance). 0 draws nothing extra from ``rng``, so
    the evaluation's seeded cases stay as they were. ``placed_adds``: the share of adds that
    name a place; any value draws the same numbers, so only the eval's default keeps its cases."""
    if kind is None:
        kind = (rng.choices(KINDS, [kind_weights.get(k, 1.0) for k in KINDS])[0]
                if kind_weights else rng.choice(KINDS))
    if kind not in _BUILDERS:
        raise ValueError(f"unknown edit kind {kind!r}; known: {', '.join(KINDS)}")
    hard = hard_refs > 0 and kind != "add" and rng.random() < hard_refs
    lo, hi = {"remove": (2, 4), "add": (1, 3)}.get(kind, (1, 4))
    while True:
        scene = world.sample_scene(rng, n_objects=rng.randint(lo, hi))
        case = (_add(rng, scene, placed_adds) if kind == "add" else _BUILDERS[kind](rng, scene))
        if case is not None and (not hard or case.ref.contextual):
            return case


def sample_batch(rng: random.Random, n: int, kind_weights: dict[str, float] | None = None,
                 hard_refs: float = 0.0, placed_adds: float = PLACED_ADDS
                 ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``n`` fresh training triples: before images (n, 64, 64, 3) uint8, instructions, after
    images; the kinds, references and places drawn as :func:`sample_case` does."""
    cases = [sample_case(rng, kind_weights=kind_weights, hard_refs=hard_refs,
                         placed_adds=placed_adds) for _ in range(n)]
    before = np.stack([world.render_array(c.before) for c in cases])
    after = np.stack([world.render_array(c.after) for c in cases])
    return before, [c.instruction for c in cases], after


def eval_cases(kind: str, n: int, seed: int = 0) -> list[EditCase]:
    """The seeded held-out evaluation set of one kind (a string seed: a stream no training
    run draws from)."""
    rng = random.Random(f"edit-eval:{seed}:{kind}")
    return [sample_case(rng, kind) for _ in range(n)]


# ---- checking an edit -----------------------------------------------------------------------------

def _kept_match(want: Obj, got) -> bool:
    return ((got.color, got.shape, got.size) == (want.color, want.shape, want.size)
            and math.dist((got.cx, got.cy), (want.cx, want.cy)) <= POSITION_TOLERANCE)


def check_edit(case: EditCase, detected) -> tuple[bool, str]:
    """Strict: the detected objects are exactly the kept ones (each where it was, within
    POSITION_TOLERANCE, with its color, shape and size) plus the asked-for one, if any."""
    want = len(case.kept) + (case.changed is not None)
    if len(detected) != want:
        found = ", ".join(f"{d.size} {d.color} {d.shape}" for d in detected) or "nothing"
        return False, f"found {len(detected)} objects ({found}), expected {want}"
    for perm in itertools.permutations(detected):
        if all(_kept_match(o, d) for o, d in zip(case.kept, perm)) and (
                case.changed is None or case.changed.holds(perm[-1])):
            return True, "ok"
    lost = [o for o in case.kept if not any(_kept_match(o, d) for d in detected)]
    if lost:
        return False, "not kept: " + ", ".join(
            f"{o.size} {o.color} {o.shape} at ({o.cx:.1f}, {o.cy:.1f})" for o in lost)
    return False, f"no object is the asked-for {case.changed.describe()}"
