"""``python -m vgen eval attention``: do a word's attention map point at the object it names?

Seeded prompts from the shapes world with 1-3 objects of distinct colors and distinct shapes
(held-out pairs excluded), so each shape word names exactly one object. Each prompt is
generated with the capture on; the exact analyzer finds the objects in the image. For every
shape word whose (color, shape) object the analyzer found exactly once:

* pointing game (Zhang et al. 2016): the map's peak pixel lies inside the object's mask;
* IoU of the thresholded map (``map >= 0.5`` after min-max normalisation, the default of
  :meth:`AttentionMaps.to_mask`; Otsu's threshold reported alongside) with the mask.

Words whose object was not found (or found twice) are skipped and counted. Color words are
scored the same way as a secondary figure. The maps are the default ones (all steps, all
resolutions and block kinds: DAAM's raw sums, ``normalize="none"``); per-resolution figures and
those of the word-share maps (``normalize="tokens"``) are reported too.
``capture_overhead`` compares the median generation time with and without the capture.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from .attention import generate_with_maps
from .attention_maps import DEFAULT_THRESHOLD, otsu_threshold
from .shapes import world
from .shapes.analyzer import detect
from .shapes.captions import Group, group_phrase, join_group_phrases

DEFAULT_N = 100
TARGET_POINTING = 0.9
TARGET_IOU = 0.5


def prompt_set(n: int = DEFAULT_N, seed: int = 0) -> list[tuple[str, list[tuple[str, str]]]]:
    """``n`` (prompt, [(color, shape), ...] in the prompt's order) pairs, fixed by ``seed``."""
    rng = random.Random(f"{seed}:attention")
    out = []
    for k in range(n):
        m = 1 + k % 3
        while True:
            pairs = list(zip(rng.sample(list(world.COLORS), m), rng.sample(list(world.SHAPES), m)))
            if not any(p in world.HELD_OUT for p in pairs):
                break
        phrases = [group_phrase(rng, Group(1, c, s, rng.choice([None, None, "small", "large"]))) for c, s in pairs]
        out.append((join_group_phrases(rng, phrases), pairs))
    return out


def _score(m: np.ndarray, mask: np.ndarray, threshold: float) -> tuple[bool, float]:
    if m.shape != mask.shape:
        from PIL import Image

        m = np.asarray(Image.fromarray(m).resize(mask.shape[::-1], Image.BILINEAR), dtype=np.float32)
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    pred = m >= threshold
    union = (pred | mask).sum()
    return bool(mask[y, x]), float((pred & mask).sum() / union) if union else 0.0


def _summary(hits: list[bool], ious: list[float]) -> dict:
    return {"pointing_game": sum(hits) / len(hits) if hits else None,
            "mean_iou": float(np.mean(ious)) if ious else None, "n": len(hits)}


def evaluate(model: str | None = None, n: int = DEFAULT_N, seed: int = 0, steps: int | None = None,
             guidance: float | None = None, scheduler: str | None = None, threshold: float = DEFAULT_THRESHOLD,
             overhead_runs: int = 5, save_dir: str | None = None, log=print) -> dict:
    from .requests import GenerateRequest

    shape_hits, shape_ious, otsu_ious = [], [], []
    color_hits, color_ious = [], []
    share_hits, share_ious = [], []
    per_res: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    skipped: Counter = Counter()
    words = 0
    result = None
    t0 = time.perf_counter()
    prompts = prompt_set(n, seed)
    for i, (prompt, pairs) in enumerate(prompts):
        req = GenerateRequest(prompt=prompt, model=model, steps=steps, guidance=guidance,
                              seed=seed * 100_000 + i, scheduler=scheduler)
        result, maps = generate_with_maps(req)
        found = detect(result.images[0])
        default = maps.maps()
        share = maps.maps(normalize="tokens")
        by_res = {f"{h}x{w}": maps.maps(resolutions=[(h, w)]) for h, w in maps.resolutions}
        shape_keys = [k for k in default if k.split(":", 1)[1] in world.SHAPES]
        color_keys = [k for k in default if k.split(":", 1)[1] in world.COLORS]
        for j, (color, shape) in enumerate(pairs):
            words += 1
            match = [d for d in found if (d.color, d.shape) == (color, shape)]
            if len(match) != 1:
                skipped["object not found" if not match else "object found more than once"] += 1
                continue
            if j >= len(shape_keys):
                skipped["word not in the tokenizer's view (truncated?)"] += 1
                continue
            mask = match[0].mask
            hit, iou = _score(default[shape_keys[j]], mask, threshold)
            shape_hits.append(hit)
            shape_ious.append(iou)
            otsu_ious.append(_score(default[shape_keys[j]], mask, otsu_threshold(default[shape_keys[j]]))[1])
            h, o = _score(share[shape_keys[j]], mask, threshold)
            share_hits.append(h)
            share_ious.append(o)
            for res, ms in by_res.items():
                h, o = _score(ms[shape_keys[j]], mask, threshold)
                per_res[res][0].append(h)
                per_res[res][1].append(o)
            if j < len(color_keys):
                h, o = _score(default[color_keys[j]], mask, threshold)
                color_hits.append(h)
                color_ious.append(o)
        if save_dir:
            out = Path(save_dir)
            out.mkdir(parents=True, exist_ok=True)
            maps.grid(result.images[0], cell_size=96).save(out / f"{i:04d}.png")
        if (i + 1) % 25 == 0:
            log(f"{i + 1}/{len(prompts)} prompts, {len(shape_hits)} words scored, "
                f"pointing {np.mean(shape_hits) if shape_hits else 0:.3f}")
    seconds = time.perf_counter() - t0
    overhead = capture_overhead(model, prompts[:overhead_runs], seed, steps, guidance, scheduler) \
        if overhead_runs else None
    req = result.request if result else None
    shape = _summary(shape_hits, shape_ious)
    return {
        "model": result.model if result else model,
        "revision": result.revision if result else None,
        "settings": {"steps": req.steps, "guidance": req.guidance, "sampler": result.sampler,
                     "size": f"{req.width}x{req.height}"} if req else {},
        "n_prompts": len(prompts),
        "seed": seed,
        "words": words,
        "words_scored": len(shape_hits),
        "skipped": dict(skipped),
        "threshold": threshold,
        "pointing_game": shape["pointing_game"],
        "mean_iou": shape["mean_iou"],
        "mean_iou_otsu": float(np.mean(otsu_ious)) if otsu_ious else None,
        "targets": {"pointing_game": TARGET_POINTING, "mean_iou": TARGET_IOU},
        "meets_targets": bool(shape["pointing_game"] is not None and shape["pointing_game"] >= TARGET_POINTING
                              and shape["mean_iou"] >= TARGET_IOU),
        "per_resolution": {r: _summary(*v) for r, v in per_res.items()},
        "color_words": _summary(color_hits, color_ious),
        "word_share": _summary(share_hits, share_ious),
        "capture_overhead": overhead,
        "seconds_per_prompt": seconds / max(1, len(prompts)),
    }


def capture_overhead(model, prompts, seed, steps, guidance, scheduler, repeats: int = 1) -> dict:
    """Median wall time of a plain generation and of one with the capture, over ``prompts``
    (interleaved, after one warm-up run of each)."""
    from .generate import generate
    from .requests import GenerateRequest

    plain, captured = [], []
    reqs = [GenerateRequest(prompt=p, model=model, steps=steps, guidance=guidance, seed=seed + i,
                            scheduler=scheduler) for i, (p, _) in enumerate(prompts)]
    if not reqs:
        return {}
    generate(reqs[0])
    generate_with_maps(reqs[0])
    for r in reqs * repeats:
        for fn, times in ((generate, plain), (generate_with_maps, captured)):
            t = time.perf_counter()
            fn(r)
            times.append(time.perf_counter() - t)
    a, b = statistics.median(plain), statistics.median(captured)
    return {"median_plain_s": a, "median_capture_s": b, "overhead": b / a - 1, "runs": len(plain)}


def format_report(r: dict) -> str:
    pct = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"model {r['model']} @ {r['revision']}  {r['settings']}",
             f"  words scored      {r['words_scored']} of {r['words']} (skipped: {r['skipped'] or 'none'})",
             f"  pointing game     {pct(r['pointing_game'])}  (target >= {r['targets']['pointing_game']})",
             f"  mean IoU @ {r['threshold']:.2f}   {pct(r['mean_iou'])}  (target >= {r['targets']['mean_iou']}; "
             f"Otsu: {pct(r['mean_iou_otsu'])})"]
    for res, v in r["per_resolution"].items():
        lines.append(f"    {res:<8} pointing {pct(v['pointing_game'])}  IoU {pct(v['mean_iou'])}")
    c = r["color_words"]
    lines.append(f"  color words       pointing {pct(c['pointing_game'])}  IoU {pct(c['mean_iou'])}")
    d = r["word_share"]
    lines.append(f"  word-share maps   pointing {pct(d['pointing_game'])}  IoU {pct(d['mean_iou'])}  (normalize='tokens')")
    if r.get("capture_overhead"):
        o = r["capture_overhead"]
        lines.append(f"  capture overhead  {o['overhead'] * 100:+.1f}%  ({o['median_plain_s']:.3f} s -> "
                     f"{o['median_capture_s']:.3f} s, median of {o['runs']})")
    return "\n".join(lines)


def main(args) -> int:
    report = evaluate(model=args.model, n=args.n or DEFAULT_N, seed=args.seed, steps=args.steps,
                      guidance=args.guidance, scheduler=args.scheduler, save_dir=args.save_dir,
                      threshold=getattr(args, "threshold", None) or DEFAULT_THRESHOLD)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
