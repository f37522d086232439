"""Train the embedded layout planner: ``python -m vgen train planner [--minutes M] [--resume]``.

A small GPT-2 (``GPT2LMHeadModel``, as the prompt-expansion LM ``vgen-shapes-lm``; its
tokenizer plus the separator, brackets and the pixel numbers 0..64) trained on freshly sampled
scenes: ``<bos> caption ; layout <eos>`` (``planner.py``), the next-token loss on the layout
part only, so it learns p(layout | caption): the exact boxes of scenes the caption truly
describes. Scenes come from the world's sampler with the text-to-image run's data mix (counts,
places and relations well represented); the held-out colour–shape pairs never occur.

State: ``runs/planner/state.pt`` every ``save_every`` steps (weights, optimizer, RNG; never
committed); the model folder ``checkpoints/vgen-shapes-planner`` is written only when the run
ends (steps, ``--minutes`` or SIGTERM), beside its place and swapped in whole.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import captions, world
from .export import partial_folder, publish, stop_on_signals
from .planner import MAX_POSITIONS, PLANNER_WORDS, prompt_text, training_text
from .train import TimeBudget, learning_rate


@dataclass
class PlannerTrainConfig:
    out: str = "checkpoints/vgen-shapes-planner"
    state_dir: str = "runs/planner"
    steps: int = 3000
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    repeat_prob: float = 0.5  # the text-to-image run's data mix (train.TrainConfig)
    phrase_prob: float = 0.8
    decay_start: int | None = 0  # cosine decay from here to ``steps`` (train.learning_rate)
    lr_min_ratio: float = 0.1
    seed: int = 0
    log_every: int = 100
    save_every: int = 250
    minutes: float | None = None  # a wall-clock budget (train.TimeBudget)


def build_planner_tokenizer():
    """``vgen-shapes-lm``'s tokenizer (BOS only, word level) with the layout words appended."""
    from .lm import build_lm_tokenizer
    from .train_edit import extend_tokenizer

    tok = extend_tokenizer(build_lm_tokenizer(), PLANNER_WORDS)
    tok.model_max_length = MAX_POSITIONS
    tok.clean_up_tokenization_spaces = False
    return tok


def build_planner(cfg: PlannerTrainConfig, tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tok), n_positions=MAX_POSITIONS, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=4 * cfg.n_embd, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True))


def sample_pairs(rng: random.Random, n: int, repeat_prob: float = 0.5,
                 phrase_prob: float = 0.8) -> list[tuple[str, world.Scene]]:
    out = []
    for _ in range(n):
        scene = world.sample_scene(rng, repeat_prob=repeat_prob)
        out.append((captions.describe(rng, scene, extra_prob=phrase_prob), scene))
    return out


def encode_pairs(tok, pairs) -> dict[str, torch.Tensor]:
    """``<bos> caption ; layout <eos>``, right-padded; the labels only on the layout and <eos>."""
    rows, starts = [], []
    for caption, scene in pairs:
        starts.append(len(tok(prompt_text(caption)).input_ids))
        rows.append(tok(training_text(caption, scene)).input_ids + [tok.eos_token_id])
    width = max(len(r) for r in rows)
    if width > MAX_POSITIONS:
        raise ValueError(f"a text of {width} tokens exceeds the planner's {MAX_POSITIONS} positions")
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (r, s) in enumerate(zip(rows, starts)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        labels[i, s: len(r)] = ids[i, s: len(r)]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def export(model, tok, cfg: PlannerTrainConfig, step: int, losses: dict, seconds: float,
           out: str | Path | None = None) -> Path:
    from transformers import GenerationConfig

    from .card_planner import write_card

    final = Path(out or cfg.out)
    tmp = partial_folder(final)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, max_new_tokens=MAX_POSITIONS, do_sample=True,
        temperature=1.0, top_k=0, top_p=1.0)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tc = tmp / "tokenizer_config.json"
    data = json.loads(tc.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"  # every transformers release loads it
    data["clean_up_tokenization_spaces"] = False
    tc.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    meta = {"step": step, "batch": cfg.batch, "samples_seen": step * cfg.batch,
            "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok),
            "positions": MAX_POSITIONS, "world_spec": world.SPEC_VERSION, "losses": losses,
            "train_seconds": round(seconds, 1), "config": asdict(cfg)}
    return publish(tmp, final, meta, write_card)


@torch.no_grad()
def _validation_loss(model, batch) -> float:
    model.eval()
    loss = model(**batch).loss.item()
    model.train()
    return loss


def train_planner(cfg: PlannerTrainConfig, resume: bool = False, log=print) -> Path:
    """Entry point of ``python -m vgen train planner``."""
    from transformers.utils import logging as tlogging

    tlogging.disable_progress_bar()
    torch.manual_seed(cfg.seed)
    tok = build_planner_tokenizer()
    model = build_planner(cfg, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                            weight_decay=cfg.weight_decay)
    rng, step, seconds, losses = random.Random(cfg.seed), 0, 0.0, {}
    state_path = Path(cfg.state_dir) / "state.pt"
    if resume:
        if state_path.exists():
            st = torch.load(state_path, weights_only=False, map_location="cpu")
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            step, seconds, losses = st["step"], st["seconds"], st["losses"]
            rng.setstate(st["rng"])
            torch.set_rng_state(st["torch_rng"])
            log(f"resumed from {state_path}: step {step}")
        else:
            log("nothing to resume from; starting fresh")

    def save_state() -> None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "seconds": seconds + time.perf_counter() - t_run, "losses": losses,
                    "rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(state_path)

    model.train()
    log(f"planner GPT-2: {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary "
        f"{len(tok)}, batch {cfg.batch}")
    val = encode_pairs(tok, sample_pairs(random.Random(20_000_003), 256, cfg.repeat_prob,
                                         cfg.phrase_prob))
    t_run = time.perf_counter()
    t0, window = t_run, []
    budget = TimeBudget(cfg.minutes, step, cfg)
    with stop_on_signals() as stop:
        while step < cfg.steps and not stop.is_set() and not budget.expired():
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg.lr, step, cfg.warmup, 0, cfg.decay_start, cfg.steps,
                                        cfg.lr_min_ratio)
            batch = encode_pairs(tok, sample_pairs(rng, cfg.batch, cfg.repeat_prob, cfg.phrase_prob))
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            budget.after_step(step, log)
            window.append(loss.item())
            if step % cfg.log_every == 0:
                losses = {"train": round(sum(window) / len(window), 4),
                          "validation": round(_validation_loss(model, val), 4)}
                window = []
                log(f"step {step}/{cfg.steps} loss {losses['train']:.4f} val "
                    f"{losses['validation']:.4f} ({(time.perf_counter() - t0) / cfg.log_every:.2f} s/step)")
                t0 = time.perf_counter()
            if step % cfg.save_every == 0:
                save_state()
    losses = {"train": round(sum(window) / len(window), 4) if window else losses.get("train"),
              "validation": round(_validation_loss(model, val), 4)}
    save_state()
    model.eval()
    out = export(model, tok, cfg, step, losses, seconds + time.perf_counter() - t_run)
    log(f"done: step {step}, exported to {out} (validation loss {losses['validation']:.4f})")
    return out
