"""The embedded prompt-expansion language model: a tiny GPT-2 that completes partial
shapes-world descriptions (``python -m vgen train lm [--steps N] [--resume] [--out DIR]``).

It is an ordinary causal language model (``GPT2LMHeadModel``, Radford et al. 2019) over the
shapes world's word-level vocabulary (``tokenizer.py``, plus a BOS-only post-processor so that
``tokenizer(prompt)`` is exactly the prefix the model continues). Trained with the usual
next-token loss on ``<bos> caption <eos>`` for freshly sampled scenes and captions
(``world.sample_scene`` + ``captions.describe``; the held-out pairs never occur), it learns the
caption grammar at every position, so any prefix a user types ("a red circle", "two blue",
"a small green triangle to the") is continued into a full description: the loss on every
position *is* the loss of completing every prefix. Saved with ``save_pretrained`` (safetensors)
so it loads with ``AutoModelForCausalLM``/``AutoTokenizer`` through the normal model-reference
path, like any Hub model.

Cheap on purpose: ~0.8 M parameters, a few minutes on one CPU core. Resumable from the exported
folder (weights and step; a fresh optimizer continues the same learning-rate schedule).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import captions, world
from .export import partial_folder, publish
from .tokenizer import BOS, build_tokenizer

MAX_POSITIONS = 48  # the longest caption is ~25 tokens; room for a long user prefix


@dataclass
class LMTrainConfig:
    out: str = "checkpoints/vgen-shapes-lm"
    steps: int = 3000
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    seed: int = 0
    log_every: int = 100
    save_every: int = 1000


def build_lm_tokenizer():
    """The shapes word-level tokenizer with ``<bos>`` prepended and no ``<eos>`` appended (a
    prompt is a prefix to continue, not a finished text); decoding joins words with spaces and
    cleans " ," into ",", so decoded text is written the way ``captions.describe`` writes it."""
    from tokenizers import processors

    tok = build_tokenizer(max_length=MAX_POSITIONS)
    bos_id = tok.convert_tokens_to_ids(BOS)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, bos_id)]
    )
    tok.clean_up_tokenization_spaces = True
    return tok


def build_lm(cfg: LMTrainConfig, tok):
    """A small GPT-2 from its config (random weights), sized by ``cfg``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tok), n_positions=MAX_POSITIONS, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=4 * cfg.n_embd,
        # Every batch is freshly sampled, so the model never sees a caption twice: no dropout.
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def caption_texts(rng: random.Random, n: int) -> list[str]:
    """``n`` fresh captions of fresh scenes (the training sampler: held-out pairs excluded)."""
    return [captions.describe(rng, world.sample_scene(rng)) for _ in range(n)]


def encode(tok, texts: list[str]) -> dict[str, torch.Tensor]:
    """``<bos> caption <eos>``, right-padded; padding is masked out of attention and loss."""
    rows = [tok(t).input_ids + [tok.eos_token_id] for t in texts]
    width = max(len(r) for r in rows)
    if width > MAX_POSITIONS:
        raise ValueError(f"a caption of {width} tokens exceeds the model's {MAX_POSITIONS} positions")
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lr_at(cfg: LMTrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def export(model, tok, cfg: LMTrainConfig, step: int, losses: dict, seconds: float,
           out: str | Path | None = None) -> Path:
    """Write the model with ``save_pretrained`` (safetensors), its tokenizer, a generation
    config, ``training.json`` and the model card; written beside the folder, then swapped in."""
    from transformers import GenerationConfig

    from .lm_card import write_lm_card

    final = Path(out or cfg.out)
    tmp = partial_folder(final)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_new_tokens=MAX_POSITIONS,
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
    )
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    # Name a tokenizer class every transformers release can load (5.x writes its own
    # "TokenizersBackend"), as the shapes image model does.
    tc = tmp / "tokenizer_config.json"
    data = json.loads(tc.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    data["clean_up_tokenization_spaces"] = True
    tc.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    meta = {
        "step": step, "batch": cfg.batch, "samples_seen": step * cfg.batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok), "positions": MAX_POSITIONS,
        "world_spec": world.SPEC_VERSION, "losses": losses, "train_seconds": round(seconds, 1),
        "config": asdict(cfg),
    }
    return publish(tmp, final, meta, write_lm_card)


@torch.no_grad()
def _validation_loss(model, batch: dict) -> float:
    model.eval()
    loss = model(**batch).loss.item()
    model.train()
    return loss


def train_lm(cfg: LMTrainConfig, resume: bool = False, log=print) -> Path:
    """Entry point of ``python -m vgen train lm``: numbered steps, one CPU core is enough."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as tlogging

    tlogging.disable_progress_bar()  # the log says when a checkpoint is written
    # 1. Tokenizer and model (from the exported folder when resuming).
    torch.manual_seed(cfg.seed)
    tok = build_lm_tokenizer()
    model, step, seconds = build_lm(cfg, tok), 0, 0.0
    info = Path(cfg.out) / "training.json"
    if resume:
        if info.exists():
            meta = json.loads(info.read_text())
            model = GPT2LMHeadModel.from_pretrained(cfg.out, use_safetensors=True)
            step, seconds = meta["step"], meta.get("train_seconds", 0.0)
            log(f"resuming from {cfg.out} at step {step} (fresh optimizer)")
        else:
            log("nothing to resume from; starting fresh")
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"GPT-2 LM: {n_params:,} parameters, vocabulary {len(tok)}, {cfg.steps} steps of batch {cfg.batch}")
    # 2. A fixed validation batch from a seed training never uses (scenes differ anyway).
    val = encode(tok, caption_texts(random.Random(10_000_019), 512))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                            weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed + step)  # a resumed run draws new captions, not repeats
    losses: dict = {}
    t0, window = time.perf_counter(), []
    # 3. Next-token loss on fresh captions; every prefix of a caption is a training example.
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        loss = model(**encode(tok, caption_texts(rng, cfg.batch))).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        window.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            losses = {"train": round(sum(window) / len(window), 4),
                      "validation": round(_validation_loss(model, val), 4)}
            window = []
            log(f"step {step}/{cfg.steps}  loss {losses['train']:.4f}  val {losses['validation']:.4f}  "
                f"lr {lr_at(cfg, step - 1):.2e}  {time.perf_counter() - t0:.0f} s")
        # 4. Export now and then (a killed run resumes from the last export) and at the end.
        if step % cfg.save_every == 0 or step == cfg.steps:
            if not losses:
                losses = {"validation": round(_validation_loss(model, val), 4)}
            model.eval()
            out = export(model, tok, cfg, step, losses, seconds + time.perf_counter() - t0)
            model.train()
            log(f"saved {out} at step {step}")
    return Path(cfg.out)
