"""The model card (README.md) of the embedded layout planner, rendered from ``training.json``
(written at export) and ``eval.json`` (``python -m vgen eval planner --update-card``)."""

from __future__ import annotations

import json
from pathlib import Path

from . import world


def _scores(folder: Path) -> str:
    path = folder / "eval.json"
    if not path.exists():
        return "Not evaluated yet: run `python -m vgen eval planner --update-card`."
    r = json.loads(path.read_text())
    rows = ["| prompts | parse | agree with the prompt | one sample: parse / agree | n |",
            "| --- | --- | --- | --- | --- |"]

    def single(v: dict) -> str:
        if "single_sample_agreement" not in v:
            return "—"
        return f"{v['single_sample_parse_rate']:.3f} / {v['single_sample_agreement']:.3f}"

    for name, v in r["categories"].items():
        rows.append(f"| {name} | {v['parse_rate']:.3f} | {v['agreement']:.3f} | {single(v)} | {v['n']} |")
    rows.append(f"| **all** | **{r['parse_rate']:.3f}** | **{r['agreement']:.3f}** | {single(r)} | {r['n']} |")
    e2e = ""
    if r.get("end_to_end"):
        e = r["end_to_end"]
        lines = ["", "End to end, prompt → plan → `vgen-shapes-grounded` (gligen_scheduled_sampling_beta "
                 f"{e['beta']:g}) vs the plain `vgen-shapes` on the same prompts and seeds, strict analyzer "
                 "accuracy against the prompt:", "", "| prompts | planned | plain | n |",
                 "| --- | --- | --- | --- |"]
        lines += [f"| {k} | {v['planned']:.3f} | {v['plain']:.3f} | {v['n']} |"
                  for k, v in e["categories"].items()]
        e2e = "\n".join(lines) + (f"\n\n{e['seconds_per_prompt']:.2f} s per prompt (plan, both images, "
                                  f"scoring); `--render {next(iter(e['categories'].values()))['n']}`.")
    step = f"Measured on the weights of training step {r['training_step']}. " if "training_step" in r else ""
    return "\n".join(rows) + f"""

{step}Temperature {r['temperature']}, one layout per prompt (seed = prompt index) planned as the app
plans (`vgen.plan`, `on_unparsable="next_seed"`: a sample that does not parse, or that
disagrees with a prompt in the shapes grammar, is resampled at the next seeds, up to 8); "one
sample" is the model's first sample alone. Prompts are
fresh captions of fresh scenes from a stream the training never draws from, plus prompts naming
the held-out pairs. A layout agrees when every count, colour, shape and stated size, the relation
or place holds on its boxes (the analyzer's strict rule) and no two boxes overlap.
{r['seconds_per_plan']:.3f} s per prompt for both (one loaded CPU core). Reproduce with
`python -m vgen eval planner --n {r['n_per_category']}`.{e2e}"""


def write_card(folder: str | Path) -> Path:
    folder = Path(folder)
    meta = json.loads((folder / "training.json").read_text())
    cfg = meta["config"]
    held = ", ".join(f"{c} {s}" for c, s in sorted(world.HELD_OUT))
    text = f"""---
library_name: transformers
pipeline_tag: text-generation
license: apache-2.0
tags: [vgen, shapes-world, tiny, layout-planning]
---

# vgen-shapes-planner

A {meta['parameters'] / 1e6:.2f} M-parameter GPT-2 (`GPT2LMHeadModel`) trained by the vgen project
to plan pictures of the shapes world: given a description it writes the layout — each object's
phrase and box — of a scene the description is true of, for the grounded generator
`vgen-shapes-grounded` to draw (LayoutGPT, Feng et al. 2023; LMD, Lian et al. 2023).

Prompt `<bos> DESCRIPTION ;`; it continues with `PHRASE [ x0 y0 x1 y1 ] ...` in whole pixels of
the 64×64 image, objects in the description's order; `vgen.plan` parses that into the layout JSON
(`{{"objects": [{{"phrase": ..., "box": [x0, y0, x1, y1]}}], "background": ""}}`, boxes in 0..1).

## Training
`python -m vgen train planner` — {meta['step']} steps of batch {meta['batch']}
({meta['samples_seen']:,} fresh scenes with fresh captions, the world's sampler with the
text-to-image data mix: repeat {cfg['repeat_prob']:g}, place/relation {cfg['phrase_prob']:g}),
next-token loss on the layout only, AdamW lr {cfg['lr']} with a cosine decay, one CPU thread,
{meta['train_seconds'] / 60:.0f} minutes. Validation loss {meta['losses'].get('validation')}.
Held out of training entirely: {held}.

## Scores
{_scores(folder)}
"""
    path = folder / "README.md"
    path.write_text(text)
    return path
