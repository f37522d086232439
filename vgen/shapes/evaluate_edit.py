"""``python -m vgen eval edit``: instruction edits scored exactly by the analyzer.

For each edit kind a fixed, seeded set of held-out cases (``edits.eval_cases``): the source
scene is rendered, edited through the engine (``vgen.edit.edit``, instruct mode, at the app's
default settings unless given), and the result counts as right only when the analyzer's scene
equals the expected one (``edits.check_edit``: every untouched object where it was, within 3 px,
with its color, shape and size, and the changed object as asked).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from . import edits, world
from .analyzer import detect

DEFAULT_N = 40


def evaluate(model: str | None = None, n: int = DEFAULT_N, seed: int = 0, steps: int | None = None,
             guidance: float | None = None, image_guidance: float | None = None,
             scheduler: str | None = None, save_dir: str | None = None, log=print) -> dict:
    """Edit and score ``n`` cases per kind; returns the report (also what ``--json`` writes)."""
    from ..catalog import EMBEDDED_EDIT_MODEL
    from ..edit import edit
    from ..metadata import save_png
    from ..pipelines import model_cache
    from ..requests import EditRequest

    model = model or EMBEDDED_EDIT_MODEL
    model_cache().get(model)  # loaded before the clock starts: seconds per edit exclude loading
    per_kind: dict[str, list[bool]] = defaultdict(list)
    failures = []
    seconds, result, i = 0.0, None, 0
    for kind in edits.KINDS:
        for case in edits.eval_cases(kind, n, seed):
            req = EditRequest(prompt=case.instruction, image=world.render(case.before),
                              mode="instruct", model=model, steps=steps, guidance=guidance,
                              scheduler=scheduler, image_guidance=image_guidance,
                              seed=seed * 100_000 + i)
            t0 = time.perf_counter()
            result = edit(req)
            seconds += time.perf_counter() - t0
            ok, reason = edits.check_edit(case, detect(result.images[0]))
            per_kind[kind].append(ok)
            if not ok:
                failures.append({"kind": kind, "instruction": case.instruction, "seed": req.seed,
                                 "reason": reason})
            if save_dir:
                folder = Path(save_dir)
                folder.mkdir(parents=True, exist_ok=True)
                world.render(case.before).save(folder / f"{i:04d}-before.png")
                save_png(result.images[0], folder / f"{i:04d}-{kind}-{'ok' if ok else 'fail'}.png")
            i += 1
            if i % 50 == 0:
                log(f"{i} edits, {sum(map(sum, per_kind.values()))} right")
    kinds = {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in per_kind.items()}
    req = result.request if result else None
    return {
        "model": result.model if result else model,
        "revision": result.revision if result else None,
        "settings": {"steps": req.steps, "guidance": req.guidance,
                     "image_guidance": req.image_guidance, "sampler": result.sampler,
                     "size": f"{req.width}x{req.height}", "precision": result.precision} if req else {},
        "n_per_kind": n,
        "seed": seed,
        "kinds": kinds,
        "overall": sum(v["accuracy"] for v in kinds.values()) / max(1, len(kinds)),
        "seconds_per_edit": seconds / max(1, i),
        "failures": failures[:60],
    }


def format_report(report: dict) -> str:
    lines = [f"model {report['model']} @ {report['revision']}  {report['settings']}"]
    for k, v in report["kinds"].items():
        lines.append(f"  {k:<10} {v['accuracy']:.3f}  (n={v['n']})")
    lines.append(f"  {'overall':<10} {report['overall']:.3f}")
    lines.append(f"  {report['seconds_per_edit']:.3f} s per edit (the engine call)")
    return "\n".join(lines)


def main(args) -> int:
    report = evaluate(model=args.model, n=args.n or DEFAULT_N, seed=args.seed, steps=args.steps,
                      guidance=args.guidance, image_guidance=getattr(args, "image_guidance", None),
                      scheduler=args.scheduler, save_dir=args.save_dir)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if getattr(args, "update_card", False):
        from ..catalog import EMBEDDED_EDIT_MODEL
        from ..hub import parse_reference
        from .card_edit import write_card

        ref = parse_reference(args.model or EMBEDDED_EDIT_MODEL)
        if not ref.is_local:
            raise ValueError("--update-card needs a local model folder")
        training = ref.local_path / "training.json"
        if training.exists():
            report["training_step"] = json.loads(training.read_text())["step"]
        (ref.local_path / "eval.json").write_text(json.dumps(report, indent=2))
        print(f"updated {write_card(ref.local_path)}")
    return 0
