"""``python -m vgen eval shapes``: a GenEval-style benchmark scored by the exact analyzer.

A fixed, seeded prompt set per category (Ghosh et al. 2023's categories, in the shapes world):
single object, two objects, counting, colors, position (relations and places), attribute
binding, and the held-out (color, shape) pairs. Each prompt is generated through the engine at
the app's default settings (or the ones given) and scored strictly.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

from . import world
from .analyzer import score
from .captions import PLACES, RELATIONS, Group, group_phrase, place_holds, relation_holds

SEEN_CATEGORIES = ("single_object", "two_objects", "counting", "colors", "position", "attribute_binding")
CATEGORIES = SEEN_CATEGORIES + ("held_out",)
DEFAULT_N = 40


def _phrase(rng: random.Random, o: world.Obj, with_size: bool) -> str:
    return group_phrase(rng, Group(1, o.color, o.shape, o.size if with_size else None))


def _scene_with(rng: random.Random, specs: list[tuple[str, str, str]]) -> world.Scene:
    """A scene with exactly these (color, shape, size) objects (resampled until they fit)."""
    while True:
        objs: list[world.Obj] = []
        for color, shape, size in specs:
            o = world.place_object(rng, color, shape, size, objs)
            if o is None:
                break
            objs.append(o)
        if len(objs) == len(specs):
            return world.Scene(tuple(objs))


def prompt_for(category: str, rng: random.Random, k: int) -> str:
    """The k-th prompt of a category."""
    seen = world.combos()
    sizes = tuple(world.SIZES)
    if category == "single_object":
        c, s = rng.choice(seen)
        return group_phrase(rng, Group(1, c, s, rng.choice(sizes)))
    if category == "colors":
        color = list(world.COLORS)[k % len(world.COLORS)]
        shape = rng.choice([s for s in world.SHAPES if (color, s) not in world.HELD_OUT])
        return group_phrase(rng, Group(1, color, shape))
    if category == "two_objects":
        (c1, s1), (c2, s2) = rng.sample(seen, 2)
        return f"{group_phrase(rng, Group(1, c1, s1))} and {group_phrase(rng, Group(1, c2, s2))}"
    if category == "counting":
        c, s = rng.choice(seen)
        return group_phrase(rng, Group(2 + k % 3, c, s))
    if category == "position":
        if k % 3 == 2:  # a place for a single object
            while True:
                c, s = rng.choice(seen)
                scene = _scene_with(rng, [(c, s, rng.choice(sizes))])
                places = [p for p, r in PLACES.items() if place_holds(scene.objects[0], r)]
                if places:
                    return f"{group_phrase(rng, Group(1, c, s))} {rng.choice(places)}"
        while True:
            (c1, s1), (c2, s2) = rng.sample(seen, 2)
            scene = _scene_with(rng, [(c1, s1, rng.choice(sizes)), (c2, s2, rng.choice(sizes))])
            a, b = scene.objects
            rels = [p for p, r in RELATIONS.items() if relation_holds(a, b, r)]
            if rels:
                return f"{_phrase(rng, a, False)} {rng.choice(rels)} {_phrase(rng, b, False)}"
    if category == "attribute_binding":
        n = 2 + k % 2
        colors = rng.sample(list(world.COLORS), n)
        shapes = rng.sample(world.SHAPES, n)
        pairs = [(c, s) for c, s in zip(colors, shapes)]
        if any(p in world.HELD_OUT for p in pairs):
            return prompt_for(category, rng, k)
        parts = [group_phrase(rng, Group(1, c, s, rng.choice(sizes))) for c, s in pairs]
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    if category == "held_out":
        c, s = sorted(world.HELD_OUT)[k % len(world.HELD_OUT)]
        if k % 2:
            c2, s2 = rng.choice(seen)
            return f"{group_phrase(rng, Group(1, c, s))} and {group_phrase(rng, Group(1, c2, s2))}"
        return group_phrase(rng, Group(1, c, s, rng.choice(sizes)))
    raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")


def prompt_set(n: int = DEFAULT_N, seed: int = 0) -> list[tuple[str, str]]:
    """(category, prompt) pairs: ``n`` per category, fixed by ``seed``."""
    out = []
    for category in CATEGORIES:
        rng = random.Random(f"{seed}:{category}")
        out += [(category, prompt_for(category, rng, k)) for k in range(n)]
    return out


def evaluate(model: str | None = None, n: int = DEFAULT_N, seed: int = 0, steps: int | None = None,
             guidance: float | None = None, scheduler: str | None = None,
             save_dir: str | None = None, log=print) -> dict:
    """Generate and score the prompt set; returns the report (also what ``--json`` writes)."""
    from ..generate import generate
    from ..metadata import save_png
    from ..requests import GenerateRequest

    per_cat: dict[str, list[bool]] = defaultdict(list)
    failures = []
    t0 = time.perf_counter()
    result = None
    for i, (category, prompt) in enumerate(prompt_set(n, seed)):
        req = GenerateRequest(prompt=prompt, model=model, steps=steps, guidance=guidance,
                              seed=seed * 100_000 + i, scheduler=scheduler)
        result = generate(req)
        s = score(result.images[0], prompt)
        per_cat[category].append(s.passed)
        if not s.passed:
            failures.append({"category": category, "prompt": prompt, "seed": req.seed, "reason": s.reason})
        if save_dir:
            save_png(result.images[0], Path(save_dir) / f"{i:04d}-{'ok' if s.passed else 'fail'}.png")
        if (i + 1) % 50 == 0:
            log(f"{i + 1} images, {sum(map(sum, per_cat.values()))} passed")
    seconds = time.perf_counter() - t0
    cats = {c: {"accuracy": sum(v) / len(v), "n": len(v)} for c, v in per_cat.items()}
    seen = [cats[c]["accuracy"] for c in SEEN_CATEGORIES if c in cats]
    req = result.request if result else None
    return {
        "model": result.model if result else model,
        "revision": result.revision if result else None,
        "settings": {"steps": req.steps, "guidance": req.guidance, "sampler": result.sampler,
                     "size": f"{req.width}x{req.height}", "precision": result.precision} if req else {},
        "n_per_category": n,
        "seed": seed,
        "categories": cats,
        "overall_seen": sum(seen) / len(seen) if seen else 0.0,
        "held_out": cats.get("held_out", {}).get("accuracy"),
        "seconds_per_image": seconds / max(1, sum(len(v) for v in per_cat.values())),
        "failures": failures[:50],
    }


def format_report(report: dict) -> str:
    lines = [f"model {report['model']} @ {report['revision']}  {report['settings']}"]
    for c, v in report["categories"].items():
        lines.append(f"  {c:<18} {v['accuracy']:.3f}  (n={v['n']})")
    lines.append(f"  {'overall (seen)':<18} {report['overall_seen']:.3f}")
    lines.append(f"  {report['seconds_per_image']:.3f} s per image (generation and scoring)")
    return "\n".join(lines)


def main(args) -> int:
    report = evaluate(model=args.model, n=args.n or DEFAULT_N, seed=args.seed, steps=args.steps,
                      guidance=args.guidance, scheduler=args.scheduler,
                      save_dir=args.save_dir)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if getattr(args, "update_card", False):
        from ..catalog import default_model
        from ..hub import parse_reference
        from .card import write_card as write_shapes_card
        from .card_distilled import write_card as write_distilled_card

        ref = parse_reference(args.model or default_model())
        if not ref.is_local:
            raise ValueError("--update-card needs a local model folder")
        training = ref.local_path / "training.json"
        meta = json.loads(training.read_text()) if training.exists() else {}
        if "step" in meta:
            report["training_step"] = meta["step"]
        # A distilled student (train_distilled) has a card of its own.
        write_card = write_distilled_card if "student_steps" in meta else write_shapes_card
        (ref.local_path / "eval.json").write_text(json.dumps(report, indent=2))
        print(f"updated {write_card(ref.local_path)}")
    return 0
