"""The model card (README.md) of the embedded instruction editor, rendered from what the folder
holds: ``training.json`` (written at export) and ``eval.json`` (written by
``python -m vgen eval edit --update-card``), so the card never states a figure no command
produced. The sibling of ``card.py`` (the text-to-image model's card)."""

from __future__ import annotations

import json
from pathlib import Path

from . import edits, world
from ..catalog import EMBEDDED_EDIT_MODEL
from .card import size_mb, inference_front_matter, objective_text

# The learning-rate schedules before the current run's (each run's config keeps only its own).
EDIT_LR_HISTORY = ("cosine decays from step 10000 to 11200, from 11200 to 16500, from 16587 to 21900, "
                   "from 21900 to 29984, from 29984 to 37821 (stopped before its scheduled end, 38231) "
                   "and from 37821 to 46440 (stopped before its scheduled end, 46901), each followed by "
                   "a warm restart")

EXAMPLES = {
    "recolor": "make the red circle blue",
    "add": "add a small yellow triangle at the top",
    "remove": "remove the blue square",
    "move": "move the circle to the left",
    "reshape": "turn the triangle into a circle",
    "resize": "make the square bigger",
}


def _eval_table(report: dict) -> str:
    rows = ["| edit | strict accuracy | cases |", "| --- | --- | --- |"]
    for name, v in report["kinds"].items():
        rows.append(f"| {name} | {v['accuracy']:.3f} | {v['n']} |")
    rows.append(f"| **overall** | **{report['overall']:.3f}** | |")
    s = report["settings"]
    when = (f"Measured on the weights of training step {report['training_step']}. "
            if "training_step" in report else "")
    return "\n".join(rows) + "\n\n" + when + (
        f"Settings (the app's defaults): {s['steps']} steps, {s['sampler']}, guidance "
        f"{s['guidance']}, image guidance {s['image_guidance']}, {s['size']}; case-set seed "
        f"{report['seed']}, {report['n_per_kind']} cases per edit; "
        f"{report['seconds_per_edit']:.2f} s per edit (editing only, 2 CPU cores).\n"
        "Reproduce with `python -m vgen eval edit "
        f"--n {report['n_per_kind']} --seed {report['seed']} --json e.json`."
    )


def _kind_mix(cfg: dict) -> str:
    weights = cfg.get("kind_weights") or {}
    if not weights:
        return "the six kinds equally often"
    more = ", ".join(f"{k} {w:g}×" for k, w in weights.items())
    return ("the six kinds equally often up to step 12638, then move 2×, add 1.5×, remove 1.5× as "
            "often as the others up to step 16587, then move 3×, add 1.5×, remove 1.5× up to step "
            "21900, then recolor 2.5×, add 2.5×, move 1.5×, resize 1.5× up to step 29984, then "
            "recolor 2.5×, add 3×, move 1.5×, resize 1.5× up to step 46440, then "
            f"{more}; from step 17696 a move's target shifts the object "
            f"{edits.MOVE_SHIFT:g} px where that fits (before: a random 8 px or more)"
            + (f"; from step 22246 {cfg['hard_refs']:.0%} of the edits that name an object are "
               "drawn so that the name needs the object's size or position (a look-alike is in "
               "the scene; about 30 % are so by chance)" if cfg.get("hard_refs") else "")
            + (f"; from step 29984 {cfg['placed_adds']:.0%} of the adds name a place (before, "
               f"as in the eval: {edits.PLACED_ADDS:.0%})"
               if cfg.get("placed_adds", edits.PLACED_ADDS) != edits.PLACED_ADDS else ""))


def write_card(folder: str | Path) -> Path:
    folder = Path(folder)
    meta = json.loads((folder / "training.json").read_text())
    cfg = meta["config"]
    report_path = folder / "eval.json"
    scores = (
        _eval_table(json.loads(report_path.read_text()))
        if report_path.exists()
        else "Not evaluated yet: run `python -m vgen eval edit --update-card`."
    )
    held = ", ".join(f"{c} {s}" for c, s in sorted(world.HELD_OUT))
    examples = "\n".join(f"- {kind}: \"{EXAMPLES[kind]}\"" for kind in edits.KINDS)
    init_step = f" (its training step {meta['init_step']})" if meta.get("init_step") else ""
    text = f"""---
library_name: diffusers
pipeline_tag: image-to-image
license: apache-2.0
tags: [vgen, shapes-world, instruct-pix2pix, tiny]
{inference_front_matter(EMBEDDED_EDIT_MODEL, image_guidance=True)}
---

# vgen-shapes-edit

An instruction editor (diffusers `StableDiffusionInstructPix2PixPipeline`, InstructPix2Pix:
Brooks et al. 2023) for the **shapes world** (spec v{meta['world_spec']}): 64×64 images of 1–4
circles, squares and triangles in 8 colours and 2 sizes. Give it a picture and an instruction:

{examples}

It is the app's offline model for the Edit tab's instruct mode. Its vocabulary is the world's
words plus the instruction words it was trained on; other words map to `<unk>` and are reported.
Held out entirely (no before- or after-image held them): {held}.

## Parts
Fine-tuned from `{meta.get('init') or 'vgen-shapes'}`{init_step}, the embedded text-to-image model:
its autoencoder (frozen), text encoder and UNet, the UNet's first convolution widened to 8 input
channels (noisy latent + the encoded source image; the new channels started at zero, as in the
paper), the tokenizer extended with the instruction words. Weights: safetensors, stored in fp16,
{size_mb(folder):.1f} MB in all.

## Training
`python -m vgen train edit` — {meta['step']} steps of batch {meta['batch']}
({meta['samples_seen']:,} exact edit pairs, freshly rendered by `vgen/shapes/edits.py`, {_kind_mix(cfg)}, with varied phrasings naming each object by its colour, shape, size or
position as needed), AdamW lr {cfg['lr']}, v-prediction with
{objective_text(cfg, 6005, meta['step'], EDIT_LR_HISTORY)}, {cfg['cond_dropout']:.0%} of examples without the instruction, {cfg['cond_dropout']:.0%}
without the source image and {cfg['cond_dropout']:.0%} without both (for the text and image
guidance scales), EMA {cfg['ema_decay']} (the exported weights). CPU only.
Resume with `python -m vgen train edit --resume`.

## Scores
Strict accuracy from `python -m vgen eval edit`: an edit counts as right only when the exact
analyzer (`vgen/shapes/analyzer.py`) finds exactly the expected scene afterwards — every untouched
object still there with its colour, shape and size, within {edits.POSITION_TOLERANCE:.0f} px of
where it was, and the changed object as asked.

{scores}
"""
    path = folder / "README.md"
    path.write_text(text)
    return path
