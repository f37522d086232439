"""The model card (README.md) of the embedded prompt-expansion LM, rendered from what its
folder holds: ``training.json`` (written at export) and ``eval.json`` (written by
``python -m vgen eval lm --update-card``), so the card never states a figure no command produced."""

from __future__ import annotations

import json
from pathlib import Path

from . import world
from .card import size_mb


def _scores(report: dict) -> str:
    e = report["expansion"]
    rows = [
        "| figure | value |", "| --- | --- |",
        f"| expansions of partial prompts | {e['n']} |",
        f"| parse as valid shapes-world descriptions | {e['valid']:.1%} |",
        f"| keep every object and attribute the user wrote | {e['kept']:.1%} |",
        f"| valid and kept | {e['valid_and_kept']:.1%} |",
        f"| added something to the prompt | {e['added']:.1%} |",
    ]
    d = report["diversity"]
    rows.append(f"| distinct expansions per {d['samples']} seeds (min / mean over "
                f"{len(d['prompts'])} prompts) | {d['min']} / {d['mean']:.1f} |")
    h = report.get("held_out")
    if h:
        rows.append(f"| held-out pairs in the prompt ({h['n']}): valid / kept | "
                    f"{h['valid']:.1%} / {h['kept']:.1%} |")
    text = "\n".join(rows)
    r = report.get("render")
    if r:
        text += (
            f"\n\nEnd to end ({r['n']} pairs, image model `{r['image_model']}`"
            + (f" at training step {r['image_model_step']}" if r.get("image_model_step") else "")
            + f", default settings): strict analyzer accuracy of images drawn from the expanded "
            f"prompts **{r['expanded_accuracy']:.3f}** vs **{r['full_accuracy']:.3f}** for the "
            "unexpanded full captions the partial prompts were cut from (same image seeds; "
            f"{r['mean_objects_expanded']:.2f} vs {r['mean_objects_full']:.2f} objects per prompt). "
            "A small sample, scored on an image model that was still training: it says the "
            "expansion does not hurt adherence, not by how much it helps."
        )
    s = report["settings"]
    text += (
        f"\n\nSettings: temperature {s['temperature']}, prompt-set seed {s['seed']}. Reproduce with "
        f"`python -m vgen eval lm --n {s['n']} --render {r['n'] if r else 0} --seed {s['seed']} "
        "--json lm.json`."
    )
    return text


def write_lm_card(folder: str | Path) -> Path:
    folder = Path(folder)
    meta = json.loads((folder / "training.json").read_text())
    cfg = meta["config"]
    report_path = folder / "eval.json"
    scores = (_scores(json.loads(report_path.read_text())) if report_path.exists()
              else "Not evaluated yet: run `python -m vgen eval lm --update-card`.")
    held = ", ".join(f"{c} {s}" for c, s in sorted(world.HELD_OUT))
    losses = ", ".join(f"{k} {v:.3f}" for k, v in meta["losses"].items())
    text = f"""---
library_name: transformers
pipeline_tag: text-generation
license: apache-2.0
tags: [vgen, shapes-world, prompt-expansion, tiny]
---

# vgen-shapes-lm

A tiny GPT-2 (`GPT2LMHeadModel`, {meta['parameters']:,} parameters) trained from scratch by the
vgen project to **expand prompts of the shapes world**: given a partial description ("a red
circle", "two blue", "a small green triangle to the") it continues it into a full, valid
description of that world (spec v{meta['world_spec']}), keeping everything the user wrote. It is
the offline default of vgen's "Expand with language model" control and of
`python -m vgen expand`.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("checkpoints/vgen-shapes-lm")
lm = AutoModelForCausalLM.from_pretrained("checkpoints/vgen-shapes-lm")
ids = tok("two blue", return_tensors="pt").input_ids  # <bos> two blue
out = lm.generate(ids, do_sample=True, max_new_tokens=30)
print(tok.decode(out[0], skip_special_tokens=True))   # e.g. "two blue squares and a red circle"
```

## Parts
- tokenizer: the shapes world's word-level vocabulary (`tokenizer.json`, {meta.get('vocab_size', 45)} tokens),
  `<bos>` prepended, no `<eos>` appended (a prompt is a prefix to continue); no chat template
- model: GPT-2, {cfg['n_layer']} layers, width {cfg['n_embd']}, {cfg['n_head']} heads,
  {meta.get('positions', 48)} positions, tied embeddings; safetensors, {size_mb(folder):.1f} MB in all

## Training
`python -m vgen train lm` — next-token loss on `<bos> caption <eos>` for {meta['step']} steps of
batch {meta['batch']} ({meta['samples_seen']:,} captions, each of a freshly sampled scene written by
the world's caption grammar), AdamW lr {cfg['lr']} with warmup and cosine decay, on one CPU core
in {meta['train_seconds'] / 60:.0f} minutes. The loss at every position is the loss of completing
every prefix, so no separate prefix data is needed. Final loss (nats per token): {losses}.
Held out of training entirely: {held} (they are never in a caption).

## Scores
From `python -m vgen eval lm` (seeded expansions of partial prompts cut from fresh captions;
validity by the world's parser `vgen.shapes.captions.parse`; "kept" checks that every count,
size, colour, shape, relation and place the user wrote is in the expansion):

{scores}
"""
    path = folder / "README.md"
    path.write_text(text)
    return path
