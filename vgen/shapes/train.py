"""Train the embedded shapes model: ``python -m vgen train shapes [--steps N] [--resume]``.

Two phases in one resumable run:
1. the autoencoder (``AutoencoderKL``, 64x64 -> 4x16x16 latents), L1 reconstruction plus a tiny
   KL term, then frozen; its latent scale is set so latents have unit variance (as SD's 0.18215);
2. the text encoder and UNet jointly, v-prediction on a cosine schedule (Nichol & Dhariwal 2021;
   Salimans & Ho 2022) with min-SNR loss weighting (Hang et al. 2023) floored by truncated SNR
   (``snr_loss_weight``), classifier-free guidance
   dropout (Ho & Salimans 2022) and EMA weights, which are what gets saved.

Resumable two ways: from ``STATE_DIR/state.pt`` (optimizer included; never committed) or, on a
fresh machine, from the saved pipeline alone (weights of the last export, fresh optimizer).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import captions, grounding, world
from .export import partial_folder, publish, stop_on_signals
from .model import (
    DECODER_NOISE_STD,
    ModelConfig,
    build_all,
    build_sample_scheduler,
    pin_posterior_std,
)


@dataclass
class TrainConfig:
    out: str = "checkpoints/vgen-shapes"
    state_dir: str = "runs/vgen-shapes"
    steps: int = 20000  # diffusion steps (phase 2)
    vae_steps: int = 1500
    batch: int = 32
    vae_batch: int = 16
    lr: float = 5e-4
    vae_lr: float = 1e-3
    warmup: int = 500
    cfg_dropout: float = 0.1
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    # Lower clamp of the x0-space loss weight (0: plain min-SNR; 1: truncated SNR, see
    # snr_loss_weight). 1 from step 12687 on: min-SNR alone starves the high-noise steps where
    # the prompt decides sizes, places and counts.
    snr_floor: float = 1.0
    # TokenCompose token loss weight (0: off); 0.002 from step 5182, 0.02 from step 12687 (the
    # truncated-SNR floor made the diffusion loss ~15x larger; this keeps the token loss's share).
    grounding_weight: float = 2e-2
    # The data mix (world.sample_scene's repeat_prob, captions.describe's extra_prob): 0.3 and
    # 0.5 up to step 18500, then 0.5 and 0.8 — the eval weighs counting and position as much
    # as every other category, while at 0.3/0.5 only 12% of captions were a pure count
    # ("three red squares"), 12% a relation and 13% a place (24%, 20% and 20% now).
    repeat_prob: float = 0.5
    phrase_prob: float = 0.8
    # Cosine decay of the learning rate from this step to ``steps`` (None: constant).
    decay_start: int | None = None
    lr_min_ratio: float = 0.1
    save_every: int = 500
    log_every: int = 50
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    # Where the steps run ("auto": CUDA when there is one; bf16 autocast there) and how many
    # processes make batches (0: this one, from the resumable rng; a GPU step outruns one core).
    device: str = "auto"
    workers: int = 0
    minutes: float | None = None  # a wall-clock budget (TimeBudget); None: run to ``steps``


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return to_unit(channels_first(images))


def channels_first(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> uint8 (B, 3, H, W): a batch as it travels between processes (a
    quarter of its float size)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def train_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; else the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the small UNet's matmuls run on tensor cores); off on the CPU,
    where bf16 measured only ~10 % faster per step and fp32 keeps runs reproducible."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class TimeBudget:
    """``--minutes M``: fit the run to M minutes of wall clock (a lent GPU comes by the minute).
    After ``probe`` timed steps (``skip`` first ones excluded: CUDA's warm-up) the run's last
    step becomes what the measured pace reaches ``reserve_s`` before the end, so the cosine
    decay (``decay_start``) ends on time; the run also stops at the deadline whatever the pace.
    Every ``refit`` steps after that the last step is fitted again to the pace so far, which
    includes the exports and anything else the machine did: fitted once, a 140-minute run that
    measured 0.92 s/step over its first 100 steps averaged 0.97 and ended 461 steps before its
    cosine's end (session 9)."""

    def __init__(self, minutes: float | None, step: int, cfg, skip: int = 20, probe: int = 100,
                 reserve_s: float = 30.0, refit: int = 500):
        self.deadline = time.time() + 60 * minutes if minutes else None
        self.start, self.skip, self.probe, self.reserve_s, self.refit = step, skip, probe, reserve_s, refit
        self.cfg, self.t_skip = cfg, None
        if self.deadline is not None:
            cfg.steps = step + 10**9  # until the pace is known, the clock alone ends the run

    def after_step(self, step: int, log) -> None:
        """Call after each step; sets the config's ``steps`` once the pace is known, and again
        every ``refit`` steps."""
        if self.deadline is None:
            return
        timed = step - (self.start + self.skip)  # steps since the clock started
        if timed == 0:
            self.t_skip = time.time()
        elif self.t_skip is not None and (timed == self.probe
                                          or (timed > self.probe and (timed - self.probe) % self.refit == 0)):
            pace = (time.time() - self.t_skip) / timed  # s/step
            left_s = self.deadline - self.reserve_s - time.time()
            steps = step + max(0, int(left_s / pace))
            if steps != self.cfg.steps:
                self.cfg.steps = steps
                log(f"time budget: {pace * 1000:.1f} ms/step, the run ends at step {self.cfg.steps}")

    def expired(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline


class _WorkerBatches(torch.utils.data.IterableDataset):
    """Endless batches from ``make(rng)`` in a DataLoader worker, each worker on its own seeded
    stream."""

    def __init__(self, make, seed: str):
        self.make, self.seed = make, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}:{info.id if info else 0}")
        while True:
            yield self.make(rng)


def batch_stream(make, rng: random.Random, workers: int, seed: str):
    """Training batches ``make(rng)``: made here from ``rng`` (``workers`` 0: the stream a resume
    continues exactly), or by ``workers`` processes on streams seeded from ``seed`` (a resume then
    draws fresh batches rather than the same ones)."""
    if workers <= 0:
        while True:
            yield make(rng)
    yield from torch.utils.data.DataLoader(_WorkerBatches(make, seed), batch_size=None,
                                           num_workers=workers, prefetch_factor=2,
                                           persistent_workers=True)


def sample_batch(rng: random.Random, n: int, cfg_dropout: float = 0.0,
                 with_scenes: bool = False, repeat_prob: float = 0.3, phrase_prob: float = 0.5):
    """Fresh scenes (held-out pairs never included) with fresh captions; some captions are
    dropped to "" so the model also learns the unconditional score for guidance.
    ``repeat_prob``: an object copies an earlier one's color and shape (counts);
    ``phrase_prob``: a one- or two-object caption states a place or relation.
    Returns (images, texts), plus the scenes when ``with_scenes``."""
    scenes = [world.sample_scene(rng, repeat_prob=repeat_prob) for _ in range(n)]
    images = np.stack([world.render_array(s) for s in scenes])  # (n, 64, 64, 3)
    texts = [
        "" if rng.random() < cfg_dropout else captions.describe(rng, s, extra_prob=phrase_prob)
        for s in scenes
    ]
    return (images, texts, scenes) if with_scenes else (images, texts)


def diffusion_batch(rng: random.Random, batch: int, cfg_dropout: float, repeat_prob: float,
                    phrase_prob: float, length: int, grounded: bool, grid: int):
    """One diffusion-phase batch: uint8 images (B, 3, 64, 64), captions, and the token
    grounding targets (masks (B, length, grid, grid) in fp16, weights (B, length)) or None.
    The masks come pooled to the latent grid, as the token loss pools them anyway (exactly:
    averages of block averages), and in fp16: 32x less to pass between processes."""
    images, texts, scenes = sample_batch(rng, batch, cfg_dropout, with_scenes=True,
                                         repeat_prob=repeat_prob, phrase_prob=phrase_prob)
    targets = None
    if grounded:
        masks, weight = grounding.target_masks(texts, scenes, length)  # (B, T, 64, 64), (B, T)
        targets = F.adaptive_avg_pool2d(masks, grid).half(), weight
    return channels_first(images), texts, targets


def fix_tokenizer_class(folder: Path) -> None:
    """transformers 5 names the fast tokenizer class ``TokenizersBackend``; record the name
    every transformers release can load (``PreTrainedTokenizerFast``) in model_index.json."""
    index = folder / "model_index.json"
    data = json.loads(index.read_text())
    data["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def snr_loss_weight(abar: torch.Tensor, prediction_type: str, gamma: float,
                    floor: float = 0.0) -> torch.Tensor:
    """Per-example weight of the MSE on the model's output, as an x0-space weight
    ``clamp(snr, floor, gamma)`` converted to the output's space (x0-loss = eps-loss / snr =
    v-loss / (snr + 1)).

    ``floor=0`` is min-SNR-gamma (Hang et al. 2023); ``floor=1`` also applies the truncated-SNR
    weighting ``max(snr, 1)`` of Salimans & Ho 2022 (progressive distillation, sec. 4): with
    min-SNR alone a v-prediction model's weight falls like ``snr`` as noise grows (0.09 at
    snr 0.1), and the high-noise steps are the ones where the prompt decides sizes, places and
    counts; the embedded model at step 12687 ignored size words (the seed, not the prompt, set
    the size)."""
    snr = abar / (1 - abar)  # (B,)
    w = torch.clamp(snr, min=floor, max=gamma)
    return w / (snr + 1) if prediction_type == "v_prediction" else w / snr


def learning_rate(base: float, step: int, warmup: int, warmup_from: int = 0,
                  decay_start: int | None = None, total: int | None = None,
                  min_ratio: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps from ``warmup_from`` (the step the optimizer state was
    created: a fresh AdamW's first updates are full-size in every parameter, so a resume without
    its state warms up again), then constant, then from ``decay_start`` a cosine decay to
    ``min_ratio * base`` at ``total`` (SGDR's schedule without restarts, Loshchilov & Hutter 2017)."""
    lr = base * min(1.0, (step - warmup_from + 1) / warmup)
    if decay_start is not None and total is not None and step >= decay_start:
        frac = min(1.0, (step - decay_start) / max(1, total - decay_start))
        lr *= min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    return lr


def optimizer_step(trainer, loss: torch.Tensor, params) -> None:
    """One update of a trainer (``trainer.cfg``, ``opt``, ``ema``, ``step``, ``warmup_from``): its
    optimizer's groups at the :func:`learning_rate` of this step (times a group's ``lr_mult``),
    the gradients of ``loss`` clipped to norm 1 over ``params``, then the EMA."""
    c = trainer.cfg
    lr = learning_rate(c.lr, trainer.step, c.warmup, trainer.warmup_from, c.decay_start, c.steps,
                       c.lr_min_ratio)
    for group in trainer.opt.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    trainer.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    trainer.opt.step()
    trainer.ema.update(trainer.step)


class EMA:
    """Exponential moving average of parameters (Polyak averaging), with the usual warmup."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self, params) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s)


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print):
        self.cfg, self.log = cfg, log
        torch.manual_seed(cfg.seed)
        self.device = train_device(cfg.device)
        self.tok, self.text, self.vae, self.unet, self.noise = build_all(cfg.model)
        for part in (self.text, self.vae, self.unet):
            part.to(self.device)
        self.alphas_cumprod = self.noise.alphas_cumprod.to(self.device)  # (T,)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)  # 64 px -> 16 latents
        self.phase, self.step, self.vae_step = "vae", 0, 0
        self.warmup_from = 0  # the step the optimizer state was created (see learning_rate)
        self.grounding_losses: list[float] = []
        self.rng = random.Random(cfg.seed)
        self.state_path = Path(cfg.state_dir) / "state.pt"
        self._make_optimizers()

    # -- setup ---------------------------------------------------------------------------
    def _make_optimizers(self) -> None:
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=self.cfg.vae_lr)
        params = list(self.unet.parameters()) + list(self.text.parameters())
        self.opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=0.01)
        self.ema = EMA(params, self.cfg.ema_decay)

    def _gen_params(self):
        return list(self.unet.parameters()) + list(self.text.parameters())

    def resume(self, reset_optimizer: bool = False) -> bool:
        """Restore from the full training state, or else from the exported pipeline (with a fresh
        optimizer). ``reset_optimizer`` drops a saved optimizer state too: needed when the loss
        changes scale, since Adam's second moments would mis-scale hundreds of updates."""
        if self.state_path.exists():
            st = torch.load(self.state_path, weights_only=False, map_location="cpu")
            self.text.load_state_dict(st["text"])
            self.vae.load_state_dict(st["vae"])
            self.unet.load_state_dict(st["unet"])
            self.vae_opt.load_state_dict(st["vae_opt"])
            self.ema.shadow = [s.to(self.device) for s in st["ema"]]
            self.phase, self.step, self.vae_step = st["phase"], st["step"], st["vae_step"]
            self.warmup_from = self.step  # the optimizer built in __init__ is fresh
            if not reset_optimizer:
                self.opt.load_state_dict(st["opt"])
                self.warmup_from = st.get("warmup_from", 0)
            self.vae.register_to_config(scaling_factor=st["scaling_factor"])
            self.rng.setstate(st["rng"])
            torch.set_rng_state(st["torch_rng"])
            self.log(f"resumed from {self.state_path}: phase {self.phase}, step {self.step}")
            return True
        info = Path(self.cfg.out) / "training.json"
        if info.exists():
            from diffusers import StableDiffusionPipeline

            meta = json.loads(info.read_text())
            pipe = StableDiffusionPipeline.from_pretrained(self.cfg.out, dtype=torch.float32)
            self.text.load_state_dict(pipe.text_encoder.state_dict())
            self.vae.load_state_dict(pipe.vae.state_dict())
            self.unet.load_state_dict(pipe.unet.state_dict())
            self.vae.register_to_config(scaling_factor=pipe.vae.config.scaling_factor)
            self.ema = EMA(self._gen_params(), self.cfg.ema_decay)
            self.phase, self.step, self.vae_step = "diffusion", meta["step"], meta["vae_step"]
            self.warmup_from = self.step
            self.rng = random.Random(self.cfg.seed + self.step)
            self.log(f"resumed from exported weights in {self.cfg.out}: step {self.step}")
            return True
        return False

    def save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(
            {
                "text": self.text.state_dict(), "vae": self.vae.state_dict(),
                "unet": self.unet.state_dict(), "vae_opt": self.vae_opt.state_dict(),
                "opt": self.opt.state_dict(), "ema": self.ema.shadow, "phase": self.phase,
                "step": self.step, "vae_step": self.vae_step, "warmup_from": self.warmup_from,
                "scaling_factor": self.vae.config.scaling_factor,
                "rng": self.rng.getstate(), "torch_rng": torch.get_rng_state(),
            },
            tmp,
        )
        tmp.replace(self.state_path)  # atomic: a kill mid-save never corrupts the state

    # -- phase 1: autoencoder -------------------------------------------------------------
    def vae_step_once(self) -> float:
        images, _ = sample_batch(self.rng, self.cfg.vae_batch)
        x = images_to_tensor(images).to(self.device)  # (B, 3, 64, 64)
        post = self.vae.encode(x).latent_dist
        # The posterior mean plus a little fixed noise: sampling at the initial unit variance
        # drowns the signal and the decoder learns color far too slowly; a small fixed noise
        # still makes the decoder robust to the diffusion model's small latent errors. Exported
        # VAEs get exactly this posterior (pin_posterior_std).
        z = post.mean + DECODER_NOISE_STD * torch.randn_like(post.mean)  # (B, 4, 16, 16)
        rec = self.vae.decode(z).sample  # (B, 3, 64, 64)
        loss = F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_opt.step()
        return loss.item()

    @torch.no_grad()
    def fit_latent_scale(self, n: int = 512) -> float:
        images, _ = sample_batch(random.Random(1234), n)
        z = self.vae.encode(images_to_tensor(images).to(self.device)).latent_dist.mean
        return float(1.0 / z.flatten().std())

    # -- phase 2: text encoder + UNet -----------------------------------------------------
    def batches(self):
        """The diffusion phase's batches (:func:`diffusion_batch`), see :func:`batch_stream`."""
        c = self.cfg
        make = functools.partial(diffusion_batch, batch=c.batch, cfg_dropout=c.cfg_dropout,
                                 repeat_prob=c.repeat_prob, phrase_prob=c.phrase_prob,
                                 length=self.tok.model_max_length, grounded=c.grounding_weight > 0,
                                 grid=world.IMAGE_SIZE // self.vae_scale)
        return batch_stream(make, self.rng, c.workers, f"{c.seed}:{self.step}")

    def diffusion_step_once(self, batch) -> float:
        c, dev = self.cfg, self.device
        x, texts, targets = batch  # uint8 (B, 3, 64, 64), B captions, grounding targets or None
        with torch.no_grad():
            z0 = self.vae.encode(to_unit(x.to(dev))).latent_dist.mean
            z0 = z0 * self.vae.config.scaling_factor  # (B, 4, 16, 16)
        ids = self.tok(texts, padding="max_length", max_length=self.tok.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(dev)  # (B, 32)
        noise = torch.randn_like(z0)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (z0.shape[0],), device=dev)
        zt = self.noise.add_noise(z0, noise, t)
        target = self.noise.get_velocity(z0, noise, t)
        record = (grounding.record_cross_attention(self.unet) if c.grounding_weight > 0
                  else contextlib.nullcontext([]))
        with autocast(dev), record as probs:
            cond = self.text(ids).last_hidden_state  # (B, 32, D)
            pred = self.unet(zt, t, cond).sample
        w = snr_loss_weight(self.alphas_cumprod[t], self.noise.config.prediction_type,
                            c.min_snr_gamma, c.snr_floor)  # (B,)
        loss = (w * ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))).mean()
        if c.grounding_weight > 0:
            masks, weight = (m.to(dev).float() for m in targets)  # (B, 32, 16, 16), (B, 32)
            g = grounding.token_loss([p.float() for p in probs], masks, weight,
                                     tuple(z0.shape[-2:]))
            self.grounding_losses.append(g.item())
            loss = loss + c.grounding_weight * g
        optimizer_step(self, loss, self._gen_params())
        return loss.item()

    # -- export ---------------------------------------------------------------------------
    def export(self, out: str | Path | None = None):
        """Write the pipeline (EMA weights) with save_pretrained: safetensors, stored in fp16
        (loaded back at any dtype) and sharded under 8 MB a file, so the whole model stays under
        20 MB with no file over 10 MB (Hugging Face Spaces refuses larger files without LFS)."""
        import copy

        from diffusers import StableDiffusionPipeline

        from .card import write_card

        final = Path(out or self.cfg.out)
        out = partial_folder(final)
        text, unet = copy.deepcopy(self.text), copy.deepcopy(self.unet)
        self.ema.copy_to(list(unet.parameters()) + list(text.parameters()))
        pipe = StableDiffusionPipeline(
            vae=pin_posterior_std(copy.deepcopy(self.vae)), text_encoder=text, tokenizer=self.tok, unet=unet,
            scheduler=build_sample_scheduler(self.cfg.model), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        ).to(torch.float16)
        pipe.save_pretrained(out, safe_serialization=True, max_shard_size="8MB")
        fix_tokenizer_class(out)
        meta = {
            "step": self.step, "vae_step": self.vae_step, "batch": self.cfg.batch,
            "samples_seen": self.step * self.cfg.batch, "world_spec": world.SPEC_VERSION,
            "config": asdict(self.cfg),
        }
        publish(out, final, meta, write_card)
        return pipe

    # -- loop -----------------------------------------------------------------------------
    def run(self) -> None:
        with stop_on_signals() as stop:
            self._loop(stop)

    def _loop(self, stop) -> None:
        c = self.cfg
        t0, losses = time.time(), []
        while self.phase == "vae" and self.vae_step < c.vae_steps:
            losses.append(self.vae_step_once())
            self.vae_step += 1
            if self.vae_step % c.log_every == 0:
                self.log(f"vae step {self.vae_step}/{c.vae_steps} l1 {np.mean(losses):.4f} "
                         f"({(time.time() - t0) / len(losses):.2f} s/step)")
                t0, losses = time.time(), []
            if self.vae_step % c.save_every == 0:
                self.save_state()
        if self.phase == "vae":
            # register_to_config, not attribute assignment: only registered values reach the
            # saved config.json (an assigned attribute is lost on export; bug of step <= 4762).
            self.vae.register_to_config(scaling_factor=self.fit_latent_scale())
            self.vae.requires_grad_(False)
            self.phase = "diffusion"
            self.log(f"latent scale {self.vae.config.scaling_factor:.4f}")
            self.save_state()
        self.vae.requires_grad_(False).eval()
        t0, losses = time.time(), []
        batches, budget = self.batches(), TimeBudget(c.minutes, self.step, c)
        while self.step < c.steps and not stop.is_set() and not budget.expired():
            losses.append(self.diffusion_step_once(next(batches)))
            self.step += 1
            budget.after_step(self.step, self.log)
            if self.step % c.log_every == 0:
                g = f" token {np.mean(self.grounding_losses):.3f}" if self.grounding_losses else ""
                self.log(f"step {self.step}/{c.steps} loss {np.mean(losses):.4f}{g} "
                         f"({(time.time() - t0) / len(losses):.2f} s/step)")
                t0, losses, self.grounding_losses = time.time(), [], []
            if self.step % c.save_every == 0:
                self.save_state()
                self.export()
                self.log(f"exported step {self.step} to {c.out}")
        self.save_state()
        self.export()
        self.log(f"done: step {self.step}, exported to {c.out}")


def train_shapes(cfg: TrainConfig, resume: bool = False, log=print,
                 reset_optimizer: bool = False) -> Trainer:
    """Entry point of ``python -m vgen train shapes``."""
    trainer = Trainer(cfg, log=log)
    if resume and not trainer.resume(reset_optimizer):
        log("nothing to resume from; starting fresh")
    trainer.run()
    return trainer
