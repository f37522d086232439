"""The model card (README.md) of the grounded shapes model, rendered from what the folder holds:
``training.json`` (written at export) and ``eval.json`` (written by ``python -m vgen eval
grounded --update-card``), so the card never states a figure no command produced."""

from __future__ import annotations

import json
from pathlib import Path

from . import world

STEPS, GUIDANCE = 10, 4.0  # the grounded model's app defaults (vgen.catalog)
LAYOUT_GUIDANCE = 0.0  # vgen's layout guidance step size for this model (vgen.catalog): off
# The learning rates before the current run's (a run's config keeps only its own): the first
# run, on one niced CPU thread, got ~4-8 s/step and its gates moved little by step 455.
GROUNDED_LR_HISTORY = {"vgen-shapes-grounded": "5e-4 (the gates 5x) up to step 455, then"}


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def beta_of(folder: Path) -> float:
    """The card's grounding fraction: the evaluation's choice when there is one, else the
    training config's."""
    report = folder / "eval.json"
    if report.exists():
        chosen = json.loads(report.read_text()).get("chosen_beta")
        if chosen is not None:
            return float(chosen)
    return float(json.loads((folder / "training.json").read_text())["config"]["beta"])


def _scores(folder: Path) -> str:
    path = folder / "eval.json"
    if not path.exists():
        return "Not evaluated yet: run `python -m vgen eval grounded --update-card`."
    r = json.loads(path.read_text())
    rows = ["| gligen_scheduled_sampling_beta | objects in their box (IoU ≥ 0.5) | strict accuracy | mean IoU |",
            "| --- | --- | --- | --- |"]
    for beta, v in sorted(r["by_beta"].items(), key=lambda kv: float(kv[0])):
        rows.append(f"| {float(beta):g} | {v['box_hit_rate']:.3f} | {v['strict_accuracy']:.3f} | "
                    f"{v['mean_iou']:.3f} |")
    base = r.get("plain")
    extra = ""
    if base:
        extra = (f"\nThe same prompts and seeds through the plain text-to-image model "
                 f"(`{base['model']}`, no layout): strict accuracy {base['strict_accuracy']:.3f}, "
                 f"objects in their box {base['box_hit_rate']:.3f}.")
    step = f"Measured on the weights of training step {r['training_step']}. " if "training_step" in r else ""
    return "\n".join(rows) + "\n" + extra + f"""

{step}Scenes of held-out seeds (`--seed {r['seed']}`, {r['n']} scenes with {r['n_objects']} objects;
seen colour–shape pairs), each drawn from its caption and its exact layout ({r['settings']['steps']}
steps, guidance {r['settings']['guidance']}, {r['seconds_per_image']:.2f} s per image on the CPU) and
judged by the exact analyzer: an object counts as in its box when a detected object of its colour
and shape has IoU ≥ 0.5 with the box; strict accuracy is the analyzer's GenEval-style check of
the caption. Reproduce with `python -m vgen eval grounded --n {r['n']} --seed {r['seed']}`."""


def _plan_scores(folder: Path) -> str:
    """``eval_plan.json`` (``python -m vgen eval plan --json``) as the card's end-to-end table."""
    path = folder / "eval_plan.json"
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    b, e = r["exact_layouts"], r["end_to_end"]
    rows = ["| category | planned | plain `vgen-shapes` | n |", "| --- | --- | --- | --- |"]
    rows += [f"| {c} | {v['planned']:.3f} | {v['plain']:.3f} | {v['n']} |" for c, v in e["categories"].items()]
    rows.append(f"| **all seen** | **{e['seen_planned']:.3f}** | **{e['seen_plain']:.3f}** | |")
    steps = r.get("steps")
    at = (f" ({steps['vgen-shapes-grounded']} steps planned, {steps['vgen-shapes']} plain)"
          if isinstance(steps, dict) else "")
    seconds = (f"median {e['median_seconds_per_plan']:.2f} s to plan + {e['median_seconds_per_image']:.2f} s "
               "to draw" if "median_seconds_per_image" in e
               else f"{e['seconds_per_plan']:.2f} s to plan + {e['seconds_per_image']:.2f} s to draw and score")
    return f"""
## Planning end to end
`python -m vgen eval plan --n {r['n']}` (held-out prompts and seeds, vgen's defaults for each model{at}):
the planner `{r['planner']['model']}` writes the layout (parse {r['planner']['parse_rate']:.3f}, agree
{r['planner']['agreement']:.3f}), this model draws it, the exact analyzer judges the image against the
prompt, beside the plain text-to-image model on the same prompts and seeds. Given the scenes'
exact layouts instead ({b['n']} scenes): {b['box_hit_rate']:.3f} of objects in their box, strict
accuracy {b['strict_accuracy']:.3f}. {seconds} per image.

""" + "\n".join(rows) + "\n"


def _lr_text(folder: Path, cfg: dict) -> str:
    before = GROUNDED_LR_HISTORY.get(Path(cfg["out"]).name, "")
    return f"{before} {cfg['lr']:g}".strip()


def _decay_text(cfg: dict, step: int) -> str:
    if cfg.get("decay_start") is None or cfg["decay_start"] >= cfg["steps"]:
        return ""
    return (f", decayed by a cosine from step {cfg['decay_start']} towards "
            f"{cfg.get('lr_min_ratio', 0.1):g}× at step {cfg['steps']}")


def _box_text(cfg: dict) -> str:
    w = cfg.get("box_attention_weight", 0.0)
    if not w:
        return ""
    return (f"\nPlus the box-attention loss (weight {w:g}, `vgen.shapes.box_attention`): in every fuser's "
            "self-attention, each visual token inside an object's box is taught to attend, among "
            "the grounding tokens, to that object's (the inside-box attention objective of Chen et "
            "al. 2023 and TokenCompose, put on the fusers), so the routing is learnt directly "
            "rather than through gates that start shut.")


def write_card(folder: str | Path) -> Path:
    folder = Path(folder)
    meta = json.loads((folder / "training.json").read_text())
    cfg = meta["config"]
    held = ", ".join(f"{c} {s}" for c, s in sorted(world.HELD_OUT))
    text = f"""---
library_name: diffusers
pipeline_tag: text-to-image
license: apache-2.0
tags: [vgen, shapes-world, tiny, gligen, layout-to-image]
base_model: vgen-shapes
inference:
  parameters:
    num_inference_steps: {STEPS}
    guidance_scale: {GUIDANCE}
    width: 64
    height: 64
    gligen_scheduled_sampling_beta: {beta_of(folder):g}
    layout_guidance_scale: {LAYOUT_GUIDANCE:g}
---

# vgen-shapes-grounded

A GLIGEN model (Li et al. 2023, "GLIGEN: Open-Set Grounded Text-to-Image Generation"; diffusers
`StableDiffusionGLIGENPipeline`, text-box variant) fine-tuned by the vgen project from the
embedded `vgen-shapes` (training step {meta.get('init_step')}): it draws a caption with each object
where its box says. The layout is a list of phrases and boxes `[x0, y0, x1, y1]` in 0..1 of the
image, origin top-left:

```python
from diffusers import StableDiffusionGLIGENPipeline
pipe = StableDiffusionGLIGENPipeline.from_pretrained("checkpoints/vgen-shapes-grounded")
image = pipe("a red circle to the left of a blue square", num_inference_steps={STEPS},
             guidance_scale={GUIDANCE}, gligen_phrases=["a red circle", "a blue square"],
             gligen_boxes=[[0.1, 0.4, 0.4, 0.7], [0.6, 0.4, 0.9, 0.7]],
             gligen_scheduled_sampling_beta={beta_of(folder):g}).images[0]
```

In vgen (`python -m vgen generate PROMPT --plan`, or a `layout` on `/generate`) the fusers draw
the layout; layout guidance (`vgen.layout_guidance`, `--layout-guidance`, card
`layout_guidance_scale`) can move the early latents too, and is off for this model: with fusers
that ground, `python -m vgen eval plan` scored better without it (exact layouts: 0.956 of objects
in their box against 0.744 with guidance 0.3), in half the time (see
the project README, "Planning the picture").

## Parts
- `vgen-shapes`' tokenizer (the end token moved to the last id, so the text encoder's pooled
  output, which the pipeline uses as the phrase embedding, is taken at the end token; every
  prompt encodes exactly as before), text encoder, autoencoder and scheduler
- UNet: `UNet2DConditionModel` with `attention_type="gated"`: `vgen-shapes`' weights, plus a
  gated self-attention layer per transformer block and the `position_net`
  (`GLIGENTextBoundingboxProjection`)
- weights: safetensors, stored in fp16, {_size_mb(folder):.1f} MB in all

## Training
`python -m vgen train grounded` — {meta['step']} steps of batch {meta['batch']}
({meta['samples_seen']:,} freshly rendered scenes, each with a fresh caption and every object's
phrase and exact box; the same data mix as `vgen-shapes`, {cfg['cfg_dropout']:.0%} caption dropout).
As in GLIGEN only the new layers train: AdamW, learning rate {_lr_text(folder, cfg)} (the gates,
which start at zero, at {cfg['gate_lr_mult']:g}× the learning rate){_decay_text(cfg, meta['step'])}; the base model stays frozen, so once the grounding is switched off (after the
first `gligen_scheduled_sampling_beta` of the steps) the unchanged `vgen-shapes` finishes the image.
v-prediction, min-SNR-γ={cfg['min_snr_gamma']} weighting with the truncated-SNR floor, half the
examples at the noisier half of the schedule (where the grounded steps sample), EMA {cfg['ema_decay']} (the exported weights). One CPU thread.{_box_text(cfg)}
Held out of training entirely (images, captions and phrases): {held}.

## Scores
{_scores(folder)}
{_plan_scores(folder)}"""
    path = folder / "README.md"
    path.write_text(text)
    return path
