"""``python -m vgen eval grounded [--model REF] [--n N] [--seed S]``: does the grounded model put
each object in its box?

Held-out seeds: ``n`` fresh scenes of seen colour–shape pairs (1–4 objects, the training data
mix) from a stream the training never draws from, each with a fresh caption and its exact
layout (the planner's phrasing: "a red circle"). Each is drawn through diffusers'
``StableDiffusionGLIGENPipeline`` at the card's steps and guidance, for each grounding fraction
``gligen_scheduled_sampling_beta`` of ``BETAS``, and judged by the exact analyzer:

- box hit rate: the share of the layout's objects for which a detected object of that colour and
  shape (each detection used once, best IoU first) has IoU >= 0.5 with the given box
  (the detected box is the bounding box of the object's pixels, coverage >= 1/2);
- strict accuracy: ``analyzer.score`` of the image against the caption (GenEval's strict rule).

The same captions and seeds through the plain text-to-image model (no layout) are the baseline.
The card's ``gligen_scheduled_sampling_beta`` is the beta with the best box hit rate (strict
accuracy breaks ties). Also ``python -m vgen.shapes.evaluate_grounded --from-state runs/grounded``
scores a running run's last saved state without touching the run.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np

from ..layout import iou
from . import captions, world
from .analyzer import detect, score
from .gligen import object_box, scene_layout

BETAS = (0.3, 0.5, 1.0)
IOU_HIT = 0.5
DEFAULT_N = 50
DEFAULT_MODEL = "checkpoints/vgen-shapes-grounded"
PLAIN_MODEL = "checkpoints/vgen-shapes"


def eval_scenes(n: int, seed: int = 0) -> list[tuple[world.Scene, str]]:
    """``n`` held-out (scene, caption) pairs: a stream no trainer draws from."""
    rng = random.Random(f"grounded-eval:{seed}")
    out = []
    for _ in range(n):
        scene = world.sample_scene(rng, repeat_prob=0.5)
        out.append((scene, captions.describe(rng, scene, extra_prob=0.8)))
    return out


def detected_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The bounding box of a detection's pixels, in fractions of the image."""
    ys, xs = np.nonzero(mask)
    s = world.IMAGE_SIZE
    return (xs.min() / s, ys.min() / s, (xs.max() + 1) / s, (ys.max() + 1) / s)


def box_hits(scene: world.Scene, detected) -> list[float]:
    """Per object of the scene: the IoU of its box with its matched detection (0: none)."""
    pairs = []
    for i, o in enumerate(scene.objects):
        for j, d in enumerate(detected):
            if (d.color, d.shape) == (o.color, o.shape):
                pairs.append((iou(object_box(o), detected_box(d.mask)), i, j))
    best = [0.0] * len(scene.objects)
    used_i, used_j = set(), set()
    for v, i, j in sorted(pairs, reverse=True):
        if i not in used_i and j not in used_j:
            best[i] = v
            used_i.add(i)
            used_j.add(j)
    return best


def _summary(ious: list[float], passed: list[bool], seconds: float, images: int) -> dict:
    return {"box_hit_rate": float(np.mean([v >= IOU_HIT for v in ious])),
            "mean_iou": float(np.mean(ious)),
            "strict_accuracy": float(np.mean(passed)),
            "seconds_per_image": seconds / max(1, images)}


def load_eval_pipeline(folder: str, cls_name: str):
    import torch

    import diffusers

    from .gligen import quiet_loading

    quiet_loading()
    pipe = getattr(diffusers, cls_name).from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate(model: str = DEFAULT_MODEL, n: int = DEFAULT_N, seed: int = 0,
             betas=BETAS, steps: int | None = None, guidance: float | None = None,
             plain: str | None = PLAIN_MODEL, save_dir: str | None = None, log=print) -> dict:
    import torch

    from .card_grounded import GUIDANCE, STEPS

    steps, guidance = steps or STEPS, guidance if guidance is not None else GUIDANCE
    cases = eval_scenes(n, seed)
    pipe = load_eval_pipeline(model, "StableDiffusionGLIGENPipeline")
    by_beta, failures = {}, []
    if save_dir:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    for beta in betas:
        ious, passed, t0 = [], [], time.perf_counter()
        for i, (scene, caption) in enumerate(cases):
            lay = scene_layout(scene)
            image = pipe(caption, num_inference_steps=steps, guidance_scale=guidance,
                         gligen_phrases=lay.phrases, gligen_boxes=lay.boxes,
                         gligen_scheduled_sampling_beta=beta, height=64, width=64,
                         generator=torch.Generator().manual_seed(seed * 100_000 + i)).images[0]
            found = detect(image)
            hits = box_hits(scene, found)
            s = score(image, caption)
            ious += hits
            passed.append(s.passed)
            if beta == betas[0] and (not s.passed or min(hits) < IOU_HIT):
                failures.append({"caption": caption, "layout": lay.rounded(3).to_json(),
                                 "ious": [round(v, 3) for v in hits], "reason": s.reason})
            if save_dir:
                image.save(Path(save_dir) / f"b{beta:g}-{i:03d}.png")
        by_beta[f"{beta:g}"] = _summary(ious, passed, time.perf_counter() - t0, len(cases))
        log(f"beta {beta:g}: objects in their box {by_beta[f'{beta:g}']['box_hit_rate']:.3f}, "
            f"strict {by_beta[f'{beta:g}']['strict_accuracy']:.3f}")
    chosen = max(by_beta, key=lambda b: (by_beta[b]["box_hit_rate"], by_beta[b]["strict_accuracy"]))
    report = {"model": model, "n": n, "seed": seed,
              "n_objects": sum(len(s.objects) for s, _ in cases),
              "settings": {"steps": steps, "guidance": guidance, "size": "64x64"},
              "by_beta": by_beta, "chosen_beta": float(chosen),
              "box_hit_rate": by_beta[chosen]["box_hit_rate"],
              "strict_accuracy": by_beta[chosen]["strict_accuracy"],
              "seconds_per_image": by_beta[chosen]["seconds_per_image"],
              "failures": failures[:30]}
    if plain:
        base = load_eval_pipeline(plain, "StableDiffusionPipeline")
        ious, passed, t0 = [], [], time.perf_counter()
        for i, (scene, caption) in enumerate(cases):
            image = base(caption, num_inference_steps=steps, guidance_scale=guidance, height=64,
                         width=64, generator=torch.Generator().manual_seed(seed * 100_000 + i)).images[0]
            ious += box_hits(scene, detect(image))
            passed.append(score(image, caption).passed)
        report["plain"] = {"model": plain, **_summary(ious, passed, time.perf_counter() - t0, len(cases))}
        log(f"plain {plain}: objects in their box {report['plain']['box_hit_rate']:.3f}, "
            f"strict {report['plain']['strict_accuracy']:.3f}")
    return report


def format_report(r: dict) -> str:
    lines = [f"model {r['model']}  {r['n']} scenes, {r['n_objects']} objects, seed {r['seed']}, "
             f"{r['settings']['steps']} steps, guidance {r['settings']['guidance']}"]
    for beta, v in r["by_beta"].items():
        lines.append(f"  beta {beta:<4} objects in box (IoU>=0.5) {v['box_hit_rate']:.3f}  "
                     f"mean IoU {v['mean_iou']:.3f}  strict {v['strict_accuracy']:.3f}  "
                     f"{v['seconds_per_image']:.2f} s/image")
    if "plain" in r:
        p = r["plain"]
        lines.append(f"  plain (no layout)      objects in box {p['box_hit_rate']:.3f}  "
                     f"mean IoU {p['mean_iou']:.3f}  strict {p['strict_accuracy']:.3f}")
    lines.append(f"  chosen beta {r['chosen_beta']:g}")
    return "\n".join(lines)


def _finish(report: dict, json_path: str | None, update_card: bool, folder: str) -> None:
    print(format_report(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    if update_card:
        from .card_grounded import write_card

        training = Path(folder) / "training.json"
        if training.exists():
            report["training_step"] = json.loads(training.read_text())["step"]
        (Path(folder) / "eval.json").write_text(json.dumps(report, indent=2))
        print(f"updated {write_card(folder)}")


def main(args) -> int:
    """``python -m vgen eval grounded`` (the shared eval options: --model, --n, --seed, --steps,
    --guidance, --json, --save-dir, --update-card)."""
    model = args.model or DEFAULT_MODEL
    report = evaluate(model=model, n=args.n or DEFAULT_N, seed=args.seed, steps=args.steps,
                      guidance=args.guidance, save_dir=args.save_dir)
    _finish(report, args.json, getattr(args, "update_card", False), model)
    return 0


if __name__ == "__main__":  # python -m vgen.shapes.evaluate_grounded --from-state runs/grounded
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--from-state", default=None,
                    help="a run's state folder (runs/grounded): export its last saved state to a "
                         "temporary folder and score that")
    ap.add_argument("--n", type=int, default=DEFAULT_N)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--betas", default=",".join(f"{b:g}" for b in BETAS))
    ap.add_argument("--no-plain", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    model = a.model
    if a.from_state:
        from .train_grounded import export_from_state

        model = str(export_from_state(a.from_state, Path(tempfile.mkdtemp()) / "grounded", log=print))
    r = evaluate(model=model, n=a.n, seed=a.seed, betas=tuple(float(b) for b in a.betas.split(",")),
                 plain=None if a.no_plain else PLAIN_MODEL)
    _finish(r, a.json, False, model)
