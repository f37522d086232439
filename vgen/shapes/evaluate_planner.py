"""``python -m vgen eval planner [--model REF] [--n N]``: do the planner's layouts parse and agree
with their prompts?

Prompts: ``n`` fresh captions per category of scenes from a stream no trainer draws from
(``seen``: the training data mix; ``place``, ``relation``, ``count``: captions of that kind only),
and ``n`` naming the held-out colour–shape pairs. One layout per prompt at seed = its index.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from . import captions, world
from .planner import PlanParseError, agrees

DEFAULT_N = 50


def _kind(caption: str) -> str:
    d = captions.parse(caption)
    if d.relation:
        return "relation"
    if d.place:
        return "place"
    if any(g.count > 1 for g in d.groups):
        return "count"
    return "other"


def prompt_set(n: int, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(f"planner-eval:{seed}")
    out: dict[str, list[str]] = {"seen": [], "place": [], "relation": [], "count": [], "held_out": []}
    while any(len(out[k]) < n for k in ("seen", "place", "relation", "count")):
        scene = world.sample_scene(rng, repeat_prob=0.5)
        caption = captions.describe(rng, scene, extra_prob=0.8)
        if len(out["seen"]) < n:
            out["seen"].append(caption)
        k = _kind(caption)
        if k in out and len(out[k]) < n:
            out[k].append(caption)
    while len(out["held_out"]) < n:
        scene = world.sample_scene(rng, repeat_prob=0.5, include_held_out=True)
        if any((o.color, o.shape) in world.HELD_OUT for o in scene.objects):
            out["held_out"].append(captions.describe(rng, scene, extra_prob=0.8))
    return out


def evaluate(model: str | None = None, n: int = DEFAULT_N, seed: int = 0,
             temperature: float | None = None, log=print) -> dict:
    from ..catalog import SHAPES_DEFAULTS
    from ..plan import DEFAULT_TEMPERATURE, PlanRequest, plan

    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    cats, failures, total, t0 = {}, [], 0, time.perf_counter()
    for name, prompts in prompt_set(n, seed).items():
        parsed = agreed = raw_parsed = raw_agreed = 0
        for i, prompt in enumerate(prompts):
            total += 1
            # One sample, as the model writes it; then as the app plans (vgen.plan: the next
            # seeds for an unparsable sample or one that disagrees with the prompt).
            raw = _plan_once(plan, PlanRequest(prompt, planner=model, seed=i, temperature=temperature))
            raw_parsed += raw is not None
            raw_agreed += raw is not None and agrees(prompt, raw.layouts[0])[0]
            r = _plan_once(plan, PlanRequest(prompt, planner=model, seed=i, temperature=temperature,
                                             on_unparsable="next_seed"))
            if r is None:
                failures.append({"category": name, "prompt": prompt, "seed": i, "reason": "unparsable"})
                continue
            parsed += 1
            ok, reason = agrees(prompt, r.layouts[0])
            agreed += ok
            if not ok:
                failures.append({"category": name, "prompt": prompt, "seed": r.seeds[0],
                                 "reason": reason, "plan": r.texts[0]})
        k = len(prompts)
        cats[name] = {"parse_rate": parsed / k, "agreement": agreed / k, "n": k,
                      "single_sample_parse_rate": raw_parsed / k, "single_sample_agreement": raw_agreed / k}
        log(f"{name}: parse {parsed / k:.3f}, agree {agreed / k:.3f} "
            f"(one sample: parse {raw_parsed / k:.3f}, agree {raw_agreed / k:.3f})")
    allp = sum(v["n"] for v in cats.values())

    def overall(key: str) -> float:
        return sum(v[key] * v["n"] for v in cats.values()) / allp

    return {"model": model or "vgen-shapes-planner", "n_per_category": n, "n": allp, "seed": seed,
            "temperature": temperature, "categories": cats,
            "parse_rate": overall("parse_rate"), "agreement": overall("agreement"),
            "single_sample_parse_rate": overall("single_sample_parse_rate"),
            "single_sample_agreement": overall("single_sample_agreement"),
            "seconds_per_plan": (time.perf_counter() - t0) / max(1, total),
            "failures": failures[:40]}


def _plan_once(plan, req):
    try:
        return plan(req)
    except PlanParseError:
        return None


def end_to_end(prompts: dict[str, list[str]], k: int, planner_model: str | None = None,
               grounded: str = "checkpoints/vgen-shapes-grounded",
               plain: str = "checkpoints/vgen-shapes", temperature: float | None = None,
               log=print) -> dict:
    """Prompt -> plan -> grounded image, scored strictly by the analyzer against the prompt, for
    the first ``k`` prompts of each category; the plain model on the same prompts and seeds."""
    import torch

    from ..catalog import SHAPES_DEFAULTS
    from ..plan import DEFAULT_TEMPERATURE, PlanRequest, plan
    from .analyzer import score
    from .card_grounded import GUIDANCE, STEPS, beta_of
    from .evaluate_grounded import load_eval_pipeline as load_pipe

    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    gpipe = load_pipe(grounded, "StableDiffusionGLIGENPipeline")
    ppipe = load_pipe(plain, "StableDiffusionPipeline")
    beta = beta_of(Path(grounded))
    out, t0, images = {}, time.perf_counter(), 0
    for name, ps in prompts.items():
        ok_plan, ok_plain = [], []
        for i, prompt in enumerate(ps[:k]):
            gen = lambda: torch.Generator().manual_seed(i)  # noqa: E731
            kw = dict(num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=64, width=64)
            try:
                lay = plan(PlanRequest(prompt, planner=planner_model, seed=i,
                                       temperature=temperature)).layouts[0]
                img = gpipe(prompt, gligen_phrases=lay.phrases, gligen_boxes=lay.boxes,
                            gligen_scheduled_sampling_beta=beta, generator=gen(), **kw).images[0]
                ok_plan.append(score(img, prompt).passed)
            except PlanParseError:
                ok_plan.append(False)
            plain_kw = dict(kw, num_inference_steps=SHAPES_DEFAULTS.steps)  # its own default
            ok_plain.append(score(ppipe(prompt, generator=gen(), **plain_kw).images[0], prompt).passed)
            images += 1
        out[name] = {"planned": sum(ok_plan) / len(ok_plan), "plain": sum(ok_plain) / len(ok_plain),
                     "n": len(ok_plan)}
        log(f"end to end {name}: planned {out[name]['planned']:.3f}, plain {out[name]['plain']:.3f}")
    return {"grounded": grounded, "plain_model": plain, "beta": beta, "categories": out,
            "seconds_per_prompt": (time.perf_counter() - t0) / max(1, images)}


def main(args) -> int:
    model = args.model or None
    temperature = getattr(args, "temperature", None)
    r = evaluate(model=model, n=args.n or DEFAULT_N, seed=args.seed, temperature=temperature)
    print(f"planner {r['model']}: parse {r['parse_rate']:.3f}, agree {r['agreement']:.3f}; one sample: "
          f"parse {r['single_sample_parse_rate']:.3f}, agree {r['single_sample_agreement']:.3f} "
          f"({r['n']} prompts, {r['seconds_per_plan']:.3f} s each)")
    if getattr(args, "render", None):
        r["end_to_end"] = end_to_end(prompt_set(args.n or DEFAULT_N, args.seed), args.render,
                                     planner_model=model, temperature=temperature)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    if getattr(args, "update_card", False):
        from .card_planner import write_card

        folder = Path(model) if model and Path(model).is_dir() else Path("checkpoints/vgen-shapes-planner")
        training = folder / "training.json"
        if training.exists():
            r["training_step"] = json.loads(training.read_text())["step"]
        (folder / "eval.json").write_text(json.dumps(r, indent=2))
        print(f"updated {write_card(folder)}")
    return 0
