"""``python -m vgen eval plan [--n N] [--json F]``: planning the picture, end to end.

Three parts, each on prompts and seeds no trainer draws from, drawn through the engine
(``vgen.generate``: the grounded model with its layout guidance, at the model's defaults):

(a) the planner: the share of layouts that parse and agree with their prompt (every count,
    colour, shape, size, relation and place; ``evaluate_planner``);
(b) the generator given exact layouts (the scene's own boxes): strict analyzer accuracy and
    the share of objects whose detected box has IoU >= 0.5 with its box (``evaluate_grounded``);
(c) end to end, prompt -> plan -> image, per GenEval category of ``eval shapes``, against the
    plain model (``vgen-shapes``, no layout) on the same prompts and seeds.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

GROUNDED = "vgen-shapes-grounded"
PLAIN = "vgen-shapes"
DEFAULT_N = 10


def _draw(prompt: str, seed: int, layout=None, model: str = GROUNDED, guidance=None, steps=None):
    from ..generate import generate
    from ..requests import GenerateRequest

    req = GenerateRequest(prompt, model=model, seed=seed, layout=layout, steps=steps,
                          layout_guidance=guidance if layout is not None else None)
    return generate(req).images[0]


def exact_layouts(n: int, seed: int, guidance=None, steps=None, log=print) -> dict:
    """Part (b)."""
    from .analyzer import detect, score
    from .evaluate_grounded import IOU_HIT, box_hits, eval_scenes
    from .gligen import scene_layout

    ious, passed, t0 = [], [], time.perf_counter()
    cases = eval_scenes(n, seed)
    for i, (scene, caption) in enumerate(cases):
        image = _draw(caption, seed * 100_000 + i, scene_layout(scene), guidance=guidance, steps=steps)
        ious += box_hits(scene, detect(image))
        passed.append(score(image, caption).passed)
    out = {"n": n, "n_objects": len(ious), "box_hit_rate": float(np.mean([v >= IOU_HIT for v in ious])),
           "mean_iou": float(np.mean(ious)), "strict_accuracy": float(np.mean(passed)),
           "seconds_per_image": (time.perf_counter() - t0) / max(1, n)}
    log(f"(b) exact layouts: objects in box {out['box_hit_rate']:.3f}, strict {out['strict_accuracy']:.3f}")
    return out


def end_to_end(n: int, seed: int, guidance=None, steps=None, planner=None, log=print) -> dict:
    """Part (c): per category, the planned pipeline's and the plain model's strict accuracy."""
    from ..errors import PlanParseError
    from ..plan import PlanRequest, plan
    from .analyzer import score
    from .evaluate import SEEN_CATEGORIES, prompt_set

    planned, plain = defaultdict(list), defaultdict(list)
    plan_s, image_s, failures = [], [], []
    for i, (category, prompt) in enumerate(prompt_set(n, seed)):
        s = seed * 100_000 + i
        t0 = time.perf_counter()
        try:
            layout = plan(PlanRequest(prompt, planner=planner, seed=s,
                                      on_unparsable="next_seed")).layouts[0]
        except PlanParseError:
            layout = None
        t1 = time.perf_counter()
        image = _draw(prompt, s, layout, guidance=guidance, steps=steps) if layout is not None else None
        plan_s.append(t1 - t0)
        image_s.append(time.perf_counter() - t1)  # the drawing alone, not its scoring
        ok = image is not None and score(image, prompt).passed
        planned[category].append(ok)
        plain[category].append(score(_draw(prompt, s, model=PLAIN, steps=steps), prompt).passed)
        if not ok:
            failures.append({"category": category, "prompt": prompt, "seed": s,
                             "layout": layout.rounded(3).to_json() if layout else None})
    cats = {c: {"planned": float(np.mean(planned[c])), "plain": float(np.mean(plain[c])),
                "n": len(planned[c])} for c in planned}
    for c, v in cats.items():
        log(f"(c) {c}: planned {v['planned']:.3f}, plain {v['plain']:.3f}")
    seen = [c for c in SEEN_CATEGORIES if c in cats]
    return {"categories": cats,
            "seen_planned": float(np.mean([v for c in seen for v in planned[c]])),
            "seen_plain": float(np.mean([v for c in seen for v in plain[c]])),
            "held_out_planned": cats.get("held_out", {}).get("planned"),
            "seconds_per_plan": float(np.mean(plan_s)), "seconds_per_image": float(np.mean(image_s)),
            # The first plan and image load the planner and the model: the medians leave that out.
            "median_seconds_per_plan": float(np.median(plan_s)),
            "median_seconds_per_image": float(np.median(image_s)),
            "failures": failures[:40]}


def evaluate(n: int = DEFAULT_N, seed: int = 0, guidance=None, steps=None, planner=None,
             log=print) -> dict:
    from .evaluate_planner import evaluate as evaluate_planner

    p = evaluate_planner(model=planner, n=n, seed=seed, log=lambda *_: None)
    log(f"(a) planner: parse {p['parse_rate']:.3f}, agree {p['agreement']:.3f}")
    from ..catalog import entry_for

    used = {m: steps or entry_for(m).defaults.steps for m in (GROUNDED, PLAIN)}
    report = {"n": n, "seed": seed, "layout_guidance": guidance, "steps": used,
              "planner": {k: p[k] for k in ("model", "parse_rate", "agreement", "categories",
                                            "seconds_per_plan")},
              "exact_layouts": exact_layouts(4 * n, seed, guidance, steps, log),
              "end_to_end": end_to_end(n, seed, guidance, steps, planner, log)}
    return report


def main(args) -> int:
    r = evaluate(n=args.n or DEFAULT_N, seed=args.seed, guidance=getattr(args, "layout_guidance", None),
                 steps=args.steps, planner=args.model)
    e = r["end_to_end"]
    print(f"end to end: seen {e['seen_planned']:.3f} planned vs {e['seen_plain']:.3f} plain; "
          f"held out {e['held_out_planned']}; plan {e['seconds_per_plan']:.2f} s + image "
          f"{e['seconds_per_image']:.2f} s (medians {e['median_seconds_per_plan']:.2f} + "
          f"{e['median_seconds_per_image']:.2f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0
