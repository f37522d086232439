"""The model card (README.md) of the embedded shapes model, rendered from what the folder
holds: ``training.json`` (written at export) and ``eval.json`` (written by
``python -m vgen eval shapes --update-card``), so the card never states a figure no command
produced."""

from __future__ import annotations

import json
from pathlib import Path

from ..catalog import EMBEDDED_MODEL, entry_for
from . import world


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def eval_table(report: dict) -> str:
    rows = ["| category | strict accuracy | prompts |", "| --- | --- | --- |"]
    for name, v in report["categories"].items():
        rows.append(f"| {name} | {v['accuracy']:.3f} | {v['n']} |")
    rows.append(f"| **overall (seen combinations)** | **{report['overall_seen']:.3f}** | |")
    s = report["settings"]
    when = (f"Measured on the weights of training step {report['training_step']}. "
            if "training_step" in report else "")
    return "\n".join(rows) + "\n\n" + when + (
        f"Settings: {s['steps']} steps, {s['sampler']}, guidance {s['guidance']}, "
        f"{s['size']}; prompt-set seed {report['seed']}, {report['n_per_category']} prompts per "
        f"category; {report['seconds_per_image']:.2f} s per image (generation and scoring, "
        "2 CPU cores).\nReproduce with `python -m vgen eval shapes "
        f"--model {report['model']} --n {report['n_per_category']} --seed {report['seed']} --json e.json`."
    )


# The learning-rate schedules before the current run's (each run's config keeps only its own).
SHAPES_LR_HISTORY = "a first cosine decay from step 13200 to 17000, then warmed up again"


def objective_text(cfg: dict, floor_from: int, step: int | None = None,
                   earlier_decay: str = "") -> str:
    """The loss weighting and learning-rate schedule, as the card states them. ``floor_from``:
    the step the truncated-SNR floor was switched on (the runs before it used min-SNR alone);
    ``step``: the step the weights are from (a run stopped before its schedule ended says so);
    ``earlier_decay``: the learning-rate history before this run's schedule, in words."""
    text = f"min-SNR-γ={cfg['min_snr_gamma']} weighting (Hang et al. 2023)"
    if cfg.get("snr_floor"):
        text += (f", from step {floor_from} on with the truncated-SNR floor max(snr, "
                 f"{cfg['snr_floor']:g}) (Salimans & Ho 2022) so the high-noise steps, where the "
                 "prompt sets sizes, places and counts, keep their weight")
    if cfg.get("decay_start") is not None:
        text += f"; learning rate {cfg['lr']}" + (f" ({earlier_decay})" if earlier_decay else "")
        text += (f" decayed by a cosine from step {cfg['decay_start']} towards "
                 f"{cfg.get('lr_min_ratio', 0.1):g}× at step {cfg['steps']}")
        if step is not None and step < cfg["steps"]:
            text += f", stopped at step {step}"
    return text


def _data_mix(cfg: dict) -> str:
    if "repeat_prob" not in cfg:
        return ""
    return (f"\nData mix (from step 18378 on; 0.3 and 0.5 before): an object copies an earlier "
            f"one's colour and shape with probability {cfg['repeat_prob']:g} (counts such as "
            f"\"three red squares\"), and a one- or two-object caption states a place or relation "
            f"with probability {cfg['phrase_prob']:g}.")


def _grounding(cfg: dict) -> str:
    if not cfg.get("grounding_weight"):
        return ""
    return (f"\nToken grounding (TokenCompose's token loss, Wang et al. 2024; weight 0.002 from "
            f"step 5182, {cfg['grounding_weight']:g} from step 12687 on): each color and shape word's "
            "cross-attention is pulled onto the exact masks of the objects it names, so the "
            "per-word attention maps of the app's Features tab show where each word went.")


def inference_front_matter(ref: str, image_guidance: bool = False) -> str:
    """The front matter's ``inference: parameters:`` (the Hub's model-card convention) with the
    app's defaults for the catalog model ``ref``: a copy of the folder under another name, or
    the same weights pushed to the Hub, then runs with the settings its scores were measured at
    (``vgen.catalog.card_defaults`` reads them back)."""
    d = entry_for(ref).defaults
    lines = ["inference:", "  parameters:", f"    num_inference_steps: {d.steps}",
             f"    guidance_scale: {d.guidance}", f"    width: {d.width}", f"    height: {d.height}"]
    if image_guidance:
        lines.append(f"    image_guidance_scale: {d.image_guidance}")
    return "\n".join(lines)


def write_card(folder: str | Path) -> Path:
    folder = Path(folder)
    meta = json.loads((folder / "training.json").read_text())
    cfg = meta["config"]
    m = cfg["model"]
    report_path = folder / "eval.json"
    scores = (
        eval_table(json.loads(report_path.read_text()))
        if report_path.exists()
        else "Not evaluated yet: run `python -m vgen eval shapes --update-card`."
    )
    held = ", ".join(f"{c} {s}" for c, s in sorted(world.HELD_OUT))
    text = f"""---
library_name: diffusers
pipeline_tag: text-to-image
license: apache-2.0
tags: [vgen, shapes-world, tiny]
{inference_front_matter(EMBEDDED_MODEL)}
---

# vgen-shapes

A complete, small Stable Diffusion (diffusers `StableDiffusionPipeline`) trained from scratch by
the vgen project on the **shapes world** (spec v{meta['world_spec']}): 64×64 images of 1–4
circles, squares and triangles in 8 colours and 2 sizes on a light background, described in
varied English — counts, sizes, colours, relations ("to the left of", "above", ...) and places
("at the top", ...). It is the model every feature is checked on; the app's offline default,
`vgen-shapes-distilled`, is distilled from it (10 steps of one UNet branch).

Its vocabulary is the world's ~40 words; other words map to `<unk>` and are reported by the app.
Held out of training entirely (images and captions): {held}.

## Parts
- tokenizer: word-level (`tokenizer.json`), max length 32
- text encoder: `CLIPTextModel`, width {m['text_width']}, {m['text_layers']} layers
- autoencoder: `AutoencoderKL`, channels {tuple(m['vae_channels'])}, 64×64 → {m['latent_channels']}×{64 // 2 ** (len(m['vae_channels']) - 1)}² latents
- UNet: `UNet2DConditionModel`, channels {tuple(m['unet_channels'])}, cross-attention at every level
- scheduler: DPM-Solver++ (2M), {m['prediction_type']}, {m['beta_schedule']} schedule
- weights: safetensors, stored in fp16, {size_mb(folder):.1f} MB in all

## Training
`python -m vgen train shapes` — autoencoder first ({meta['vae_step']} steps, L1 + tiny KL), then
text encoder and UNet jointly: {meta['step']} steps of batch {meta['batch']}
({meta['samples_seen']:,} freshly rendered images with fresh captions), AdamW lr {cfg['lr']},
{objective_text(cfg, 12687, meta['step'], SHAPES_LR_HISTORY)}, {cfg['cfg_dropout']:.0%} caption dropout for
classifier-free guidance, EMA {cfg['ema_decay']} (the exported weights).{_data_mix(cfg)}{_grounding(cfg)}
CPU only. Resume with `python -m vgen train shapes --resume` (from this folder's weights when no
optimizer state is around).

## Scores
Strict GenEval-style accuracy from `python -m vgen eval shapes`, judged by the exact
analyzer in `vgen/shapes/analyzer.py`:

{scores}
"""
    path = folder / "README.md"
    path.write_text(text)
    return path
