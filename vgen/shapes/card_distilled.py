"""The model card (README.md) of the distilled shapes model, rendered from what the folder holds:
``training.json`` (written at export) and ``eval.json`` (``python -m vgen eval shapes --model
vgen-shapes-distilled --update-card``), so the card never states a figure no command produced."""

from __future__ import annotations

import json
from pathlib import Path

from ..catalog import EMBEDDED_DISTILLED_MODEL
from .card import eval_table, inference_front_matter, size_mb


def _teacher_scores(init: str) -> str:
    """The teacher's own scores beside the student's, from its folder's ``eval.json``."""
    from ..hub import CHECKPOINTS_DIR

    path = CHECKPOINTS_DIR.parent / init / "eval.json"
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    s = r["settings"]
    return (f"\n\nThe teacher (`{init}`) at its own defaults, {s['steps']} steps of {s['sampler']} with "
            f"two branches each: overall {r['overall_seen']:.3f}, held-out {r['held_out']:.3f} "
            f"(its `eval.json`, the same prompt set).")


def write_card(folder: str | Path) -> Path:
    folder = Path(folder)
    meta = json.loads((folder / "training.json").read_text())
    cfg = meta["config"]
    report_path = folder / "eval.json"
    scores = (eval_table(json.loads(report_path.read_text())) + _teacher_scores(meta["init"])
              if report_path.exists() else
              f"Not evaluated yet: run `python -m vgen eval shapes --model {EMBEDDED_DISTILLED_MODEL} --update-card`.")
    n = meta["student_steps"]
    # The first round's teacher runs classifier-free guidance; a later round's is a student.
    teacher_calls = ("two (the conditional and the unconditional branch of classifier-free guidance)"
                     if meta.get("teacher_branches", 2) == 2 else "one (itself a distilled student)")
    text = f"""---
library_name: diffusers
pipeline_tag: text-to-image
license: apache-2.0
tags: [vgen, shapes-world, tiny, distillation]
{inference_front_matter(EMBEDDED_DISTILLED_MODEL)}
---

# {EMBEDDED_DISTILLED_MODEL}

The embedded shapes model (`{meta['init']}`, training step {meta.get('init_step')}) distilled to
draw in **{n} steps of one UNet call each**, where the teacher takes {2 * n} steps of
{teacher_calls}. A stock diffusers
`StableDiffusionPipeline`: the guidance scale reaches the UNet as an embedding
(`unet.config.time_cond_proj_dim`, as in LCM models), so `guidance_scale` still works, in one
branch; a negative prompt has no effect.

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("checkpoints/{EMBEDDED_DISTILLED_MODEL}")
image = pipe("two red circles above a blue square", num_inference_steps={n}, guidance_scale={cfg['default_guidance']},
             height=64, width=64).images[0]
```

## Training
`python -m vgen train distilled`: guidance and step distillation together, as the second stage
of Meng et al. 2023 (On Distillation of Guided Diffusion Models), with the target of progressive
distillation (Salimans & Ho 2022, Alg. 2): the student's one DDIM step lands where two guided
DDIM steps of the teacher land, at guidance scales {cfg['guidance_min']:g}–{cfg['guidance_max']:g}
({cfg['default_guidance_share']:.0%} of the examples at the default {cfg['default_guidance']:g}).
{meta['step']} steps of batch {meta['batch']} ({meta['samples_seen']:,} freshly rendered images
with fresh captions, {cfg['cfg_dropout']:.0%} of them empty), AdamW lr {cfg['lr']}, v-space MSE
with the truncated-SNR weight max(snr, 1), EMA {cfg['ema_decay']} (the exported weights).
Only the UNet is trained; the tokenizer, text encoder and autoencoder are the teacher's.
Scheduler: DDIM, trailing timestep spacing (the grid it was distilled on). Weights in fp16
safetensors, {size_mb(folder):.1f} MB in all.

## Scores
Strict GenEval-style accuracy from `python -m vgen eval shapes --model {EMBEDDED_DISTILLED_MODEL}`,
judged by the exact analyzer in `vgen/shapes/analyzer.py`:

{scores}
"""
    path = folder / "README.md"
    path.write_text(text)
    return path
