"""Evaluate prompt expansion on the shapes world: ``python -m vgen eval lm [--n N] --json FILE``.

Figures (issue 5):

1. **validity**: seeded expansions of partial prompts (prefixes cut at a random word of fresh
   captions of the world's grammar, plus a few hand-written ones) that ``captions.parse``
   accepts as full descriptions;
2. **kept**: expansions that keep every count, size, colour, shape, relation and place the
   user wrote (:func:`kept`, checked on meaning, so it also holds a chat model that rewrites to
   account; for a completion model the user's text is the start of the expansion anyway);
3. **diversity**: distinct expansions among 50 seeds of one prompt;
4. **end to end**: images of the expanded prompts, drawn by the embedded image model at its
   default settings and scored by the exact analyzer, against images of the unexpanded full
   captions the partial prompts were cut from (same image seeds): the expansion must not hurt
   adherence.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

from ..errors import CaptionParseError
from . import captions, world
from .captions import (
    ARTICLES,
    COUNT_WORDS,
    PLACES,
    PLURALS,
    PREFIXES,
    RELATIONS,
    SIZE_WORDS,
    Description,
    Group,
    parse,
    tokenize,
)

DIVERSITY_PROMPTS = ("a red circle", "two blue", "a large", "a green triangle and")
HAND_PROMPTS = ("a red circle", "two blue", "a small", "three", "a green triangle to the",
                "a large yellow circle and", "an orange circle at the", "a picture of",
                "two pink squares,", "a blue square above")
SEPARATORS = (",", "and")
_SHAPE_OF = {**{s: s for s in world.SHAPES}, **{p: s for s, p in PLURALS.items()}}
_VOCAB = set(captions.vocabulary())


# ---- what a partial prompt states ------------------------------------------------------------

@dataclass(frozen=True)
class PartialGroup:
    """An object phrase as far as the user wrote it (None: not stated yet)."""

    count: int | None = None
    size: str | None = None
    color: str | None = None
    shape: str | None = None

    def matches(self, g: Group) -> bool:
        return all(mine is None or mine == theirs for mine, theirs in
                   ((self.count, g.count), (self.size, g.size), (self.color, g.color), (self.shape, g.shape)))


@dataclass(frozen=True)
class Facts:
    """What a partial prompt claims: its object phrases (in order), the relations or places it
    allows (a phrase cut short, "to the", allows every relation it could still become), whether
    it ends in a separator (more objects must follow), and words outside the grammar (they must
    reappear)."""

    groups: tuple[PartialGroup, ...] = ()
    relations: frozenset | None = None
    places: frozenset | None = None
    more: bool = False
    free_words: tuple[str, ...] = ()


def _partial_group(words: list[str]) -> PartialGroup | None:
    """[count] [size] [color] [shape] in that order, any of them missing; None otherwise."""
    fields: dict = {}
    order = ("count", "size", "color", "shape")
    last = -1
    for w in words:
        if w in ARTICLES or w in COUNT_WORDS:
            slot, value = 0, COUNT_WORDS.get(w, 1)
        elif w in SIZE_WORDS:
            slot, value = 1, SIZE_WORDS[w]
        elif w in world.COLORS:
            slot, value = 2, w
        elif w in _SHAPE_OF:
            slot, value = 3, _SHAPE_OF[w]
        else:
            return None
        if slot <= last:
            return None
        fields[order[slot]], last = value, slot
    return PartialGroup(**fields)


def _allowed(tail: list[str], phrases: dict[str, str]) -> frozenset:
    return frozenset(v for p, v in phrases.items() if p.split()[: len(tail)] == tail)


def _facts_of(words: list[str]) -> Facts:
    free = tuple(w for w in words if w not in _VOCAB)
    relations = places = None
    # 1. A relation or place phrase, complete (anywhere) or cut short (at the end).
    rel = captions.find_phrase(words, RELATIONS)
    place = captions.find_phrase(words, PLACES)
    parts: list[list[str]]
    if rel is not None:
        i, j, value = rel
        relations, parts = frozenset({value}), [words[:i], words[j:]]
    elif place is not None:
        i, j, value = place
        places, parts = frozenset({value}), [words[:i]]
    else:
        parts = [words]
        for k in (3, 2, 1):
            tail = words[-k:] if len(words) >= k else None
            if not tail:
                continue
            r, p = _allowed(tail, RELATIONS), _allowed(tail, PLACES)
            if r or p:
                relations, places = (r or None), (p or None)
                parts = [words[:-k], []] if r else [words[:-k]]
                break
    # 2. Object phrases: split on separators unless a relation fixes exactly two.
    phrases: list[list[str]] = []
    more = False
    if relations is not None:
        phrases = parts
    else:
        current: list[str] = []
        for w in parts[0]:
            if w in SEPARATORS:
                if current:
                    phrases.append(current)
                current = []
                more = True
            else:
                current.append(w)
                more = False
        if current:
            phrases.append(current)
    groups = []
    for ph in phrases:
        g = _partial_group(ph)
        if g is not None:
            groups.append(g)
        elif relations is not None:  # keep subject/object positions; its words are in `free`
            groups.append(PartialGroup())
    return Facts(tuple(groups), relations, places, more, free)


def facts(text: str) -> list[Facts]:
    """The readings of a partial prompt (more than one where it is ambiguous: "a" may start
    "a red circle" or "a picture of")."""
    words = tokenize(text)
    readings = []
    for p in sorted({p for p in PREFIXES if p}, key=len, reverse=True):
        pw = p.split()
        if words[: len(pw)] == pw:
            return [_facts_of(words[len(pw):])]
        if 0 < len(words) < len(pw) and words == pw[: len(words)]:
            readings.append(Facts())  # the start of "a picture of": nothing stated yet
    return [_facts_of(words)] + readings


def _holds(f: Facts, d: Description, expanded_words: list[str]) -> bool:
    if any(w not in expanded_words for w in f.free_words):
        return False
    if f.relations is not None:
        if d.relation not in f.relations:
            return False
        return all(pg.matches(g) for pg, g in zip(f.groups, d.groups))
    if f.places is not None and d.place not in f.places:
        return False
    if len(d.groups) < len(f.groups) + (1 if f.more else 0):
        return False
    # Every stated group matched by its own group of the expansion (any order).
    return any(all(pg.matches(g) for pg, g in zip(f.groups, perm))
               for perm in permutations(d.groups, len(f.groups)))


def _subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(w in it for w in small)


def kept(partial: str, expanded: str) -> bool:
    """Whether ``expanded`` keeps everything ``partial`` states. When the expansion parses,
    on meaning (counts, sizes, colours, shapes, relation, place; :class:`Facts`); otherwise
    the user's words must all reappear, in order."""
    try:
        d = parse(expanded)
    except CaptionParseError:
        return _subsequence(tokenize(partial), tokenize(expanded))
    words = tokenize(expanded)
    return any(_holds(f, d, words) for f in facts(partial))


def valid(text: str) -> bool:
    try:
        parse(text)
        return True
    except CaptionParseError:
        return False


# ---- prompt sets -----------------------------------------------------------------------------

def _join(words: list[str]) -> str:
    return " ".join(words).replace(" ,", ",")


def partial_prompts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(partial prompt, the full caption it was cut from): the hand-written prompts (no full
    caption: "") and then prefixes of fresh captions, cut after a random word (1 word up to
    the whole caption)."""
    rng = random.Random(seed)
    out = [(p, "") for p in HAND_PROMPTS][:n]
    while len(out) < n:
        full = captions.describe(rng, world.sample_scene(rng))
        words = tokenize(full)
        out.append((_join(words[: rng.randint(1, len(words))]), full))
    return out


def held_out_prompts() -> list[str]:
    """Prompts naming the pairs held out of training (the LM never saw them)."""
    out = []
    for color, shape in sorted(world.HELD_OUT):
        art = "an" if color[0] in "aeiou" else "a"
        out += [f"{art} {color} {shape}", f"two {color} {PLURALS[shape]}",
                f"a small {color} {shape} and", f"{art} {color} {shape} to the"]
    return out


# ---- the evaluation --------------------------------------------------------------------------

def _expand_one(prompt: str, lm: str, seed: int, temperature: float) -> str:
    from ..expand import ExpandRequest, expand

    return expand(ExpandRequest(prompt, lm=lm, seed=seed, temperature=temperature)).variants[0]


def _rates(rows: list[dict]) -> dict:
    n = max(1, len(rows))
    return {
        "n": len(rows),
        "valid": sum(r["valid"] for r in rows) / n,
        "kept": sum(r["kept"] for r in rows) / n,
        "valid_and_kept": sum(r["valid"] and r["kept"] for r in rows) / n,
        "added": sum(r["expanded"].strip() != r["prompt"].strip() for r in rows) / n,
    }


def _image_model_step(model: str) -> int | None:
    from ..hub import parse_reference

    try:
        ref = parse_reference(model)
        if ref.is_local and (ref.local_path / "training.json").exists():
            return json.loads((ref.local_path / "training.json").read_text()).get("step")
    except Exception:
        return None
    return None


def evaluate_lm(lm: str | None = None, n: int = 500, seed: int = 0, temperature: float | None = None,
                n_render: int = 40, image_model: str = "vgen-shapes", diversity_samples: int = 50,
                log=print) -> dict:
    """All figures of the module docstring; the report is what ``--json`` writes."""
    from ..expand import DEFAULT_TEMPERATURE, EMBEDDED_LM

    lm = lm or EMBEDDED_LM
    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    t0 = time.perf_counter()
    # 1-2. Validity and kept, over n seeded expansions of partial prompts.
    rows = []
    for i, (prompt, full) in enumerate(partial_prompts(n, seed)):
        e = _expand_one(prompt, lm, seed * 1_000_003 + i, temperature)
        rows.append({"prompt": prompt, "full": full, "expanded": e, "valid": valid(e),
                     "kept": kept(prompt, e), "seed": seed * 1_000_003 + i})
    expansion = _rates(rows)
    log(f"{n} expansions: {expansion['valid']:.1%} valid, {expansion['kept']:.1%} kept "
        f"({time.perf_counter() - t0:.0f} s)")
    # 3. Diversity: distinct expansions among diversity_samples seeds of one prompt.
    distinct = {}
    for p in DIVERSITY_PROMPTS:
        texts = {_expand_one(p, lm, seed * 1_000_003 + 500_000 + k, temperature) for k in range(diversity_samples)}
        distinct[p] = len(texts)
    diversity = {"samples": diversity_samples, "prompts": distinct, "min": min(distinct.values()),
                 "mean": sum(distinct.values()) / len(distinct)}
    log(f"distinct expansions per {diversity_samples} seeds: {distinct}")
    # Held-out pairs in the prompt: the LM never saw them; reported apart.
    held = []
    for k, p in enumerate(held_out_prompts()):
        for j in range(10):
            e = _expand_one(p, lm, seed * 1_000_003 + 700_000 + 10 * k + j, temperature)
            held.append({"prompt": p, "expanded": e, "valid": valid(e), "kept": kept(p, e)})
    held_rates = _rates(held)
    log(f"held-out prompts: {held_rates['valid']:.1%} valid, {held_rates['kept']:.1%} kept")
    # 4. End to end: expanded vs the full captions they were cut from, same image seeds.
    render = _render(rows, n_render, image_model, seed, log) if n_render > 0 else None
    failures = [r for r in rows if not (r["valid"] and r["kept"])]
    return {
        "lm": lm,
        "settings": {"n": n, "seed": seed, "temperature": temperature},
        "expansion": expansion,
        "diversity": diversity,
        "held_out": held_rates,
        "render": render,
        "seconds": round(time.perf_counter() - t0, 1),
        "failures": failures[:50],
        "held_out_failures": [r for r in held if not (r["valid"] and r["kept"])][:20],
        "examples": rows[:30],
    }


def _render(rows: list[dict], n_render: int, image_model: str, seed: int, log) -> dict:
    from ..generate import generate
    from ..requests import GenerateRequest
    from .analyzer import score

    pairs = [r for r in rows if r["full"]][:n_render]
    ok_full, ok_exp, n_full, n_exp, both = 0, 0, 0, 0, []
    result = None
    t0 = time.perf_counter()
    for i, r in enumerate(pairs):
        image_seed = seed * 100_000 + i
        outcome = {}
        for key, prompt in (("full", r["full"]), ("expanded", r["expanded"])):
            result = generate(GenerateRequest(prompt=prompt, model=image_model, seed=image_seed))
            outcome[key] = score(result.images[0], prompt).passed
        ok_full += outcome["full"]
        ok_exp += outcome["expanded"]
        n_full += _objects(r["full"])
        n_exp += _objects(r["expanded"])
        both.append({"full": r["full"], "expanded": r["expanded"], "image_seed": image_seed, **{
            f"{k}_passed": v for k, v in outcome.items()}})
        if (i + 1) % 10 == 0:
            log(f"rendered {i + 1}/{len(pairs)} pairs: full {ok_full}, expanded {ok_exp} passed")
    k = max(1, len(pairs))
    req = result.request if result else None
    return {
        "n": len(pairs),
        "image_model": image_model,
        "image_model_revision": result.revision if result else None,
        "image_model_step": _image_model_step(image_model),
        "settings": {"steps": req.steps, "guidance": req.guidance, "sampler": result.sampler,
                     "size": f"{req.width}x{req.height}"} if req else {},
        "full_accuracy": ok_full / k,
        "expanded_accuracy": ok_exp / k,
        "mean_objects_full": n_full / k,
        "mean_objects_expanded": n_exp / k,
        "seconds_per_image": (time.perf_counter() - t0) / max(1, 2 * len(pairs)),
        "pairs": both,
    }


def _objects(text: str) -> int:
    try:
        return parse(text).n_objects
    except CaptionParseError:
        return 0


def format_report(report: dict) -> str:
    e, d, h = report["expansion"], report["diversity"], report["held_out"]
    lines = [
        f"lm {report['lm']}  (temperature {report['settings']['temperature']}, seed {report['settings']['seed']})",
        f"expansions of partial prompts: {e['n']}",
        f"  valid (parse):        {e['valid']:.1%}",
        f"  keep what user wrote: {e['kept']:.1%}",
        f"  valid and kept:       {e['valid_and_kept']:.1%}",
        f"  added something:      {e['added']:.1%}",
        f"distinct per {d['samples']} seeds: " + ", ".join(f"{p!r} {k}" for p, k in d["prompts"].items()),
        f"held-out pairs in prompt ({h['n']}): valid {h['valid']:.1%}, kept {h['kept']:.1%}",
    ]
    r = report.get("render")
    if r:
        lines.append(
            f"end to end ({r['n']} pairs, {r['image_model']} step {r['image_model_step']}): "
            f"expanded {r['expanded_accuracy']:.3f} vs full captions {r['full_accuracy']:.3f} "
            f"(mean objects {r['mean_objects_expanded']:.2f} vs {r['mean_objects_full']:.2f})"
        )
    return "\n".join(lines)


def main(args) -> int:
    """``python -m vgen eval lm``: print the figures; ``--json`` writes the report,
    ``--update-card`` stores it as eval.json in the (local) LM folder and re-renders its card."""
    report = evaluate_lm(lm=getattr(args, "lm", None), n=args.n or 500, seed=args.seed,
                         temperature=getattr(args, "temperature", None),
                         n_render=40 if getattr(args, "render", None) is None else args.render,
                         image_model=args.model or "vgen-shapes")
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if getattr(args, "update_card", False):
        from ..hub import parse_reference
        from .lm_card import write_lm_card

        ref = parse_reference(report["lm"])
        if not ref.is_local:
            raise ValueError("--update-card needs a local LM folder")
        (ref.local_path / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"updated {write_lm_card(ref.local_path)}")
    return 0
