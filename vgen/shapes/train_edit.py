"""Train the embedded instruction editor: ``python -m vgen train edit [--init REF] [--steps N]``.

An InstructPix2Pix model (Brooks et al. 2023, "InstructPix2Pix: Learning to Follow Image Editing
Instructions") fine-tuned from the embedded text-to-image model on the shapes world's exact edit
triples (``edits.py``), saved as a stock diffusers ``StableDiffusionInstructPix2PixPipeline``:

1. start from the text-to-image model (``checkpoints/vgen-shapes``, read once at the start): its
   VAE (frozen), text encoder and UNet; the UNet's first convolution is widened from 4 to 8 input
   channels (noisy latent + encoded source image) with the new channels' weights zero, so at
   step 0 the model is exactly the text-to-image model (Brooks et al. 2023, sec. 3.3); the
   tokenizer gains the instruction words ("make", "move", "bigger", ...) the captions lack, with
   fresh embedding rows;
2. train UNet and text encoder on (source, instruction) -> edited image, with the init model's
   noise schedule and prediction type (v-prediction), min-SNR weighting (Hang et al. 2023) and
   EMA weights; conditioning dropout for the two guidance scales: 5% of the examples drop the
   instruction, 5% the source image, 5% both (Brooks et al. 2023, sec. 3.4), as diffusers'
   ``train_instruct_pix2pix.py`` does. The source latent is the VAE posterior mode, unscaled,
   and a dropped source is zeros: exactly what the pipeline feeds the UNet at inference.

Resumable like ``train.py``: from ``STATE_DIR/state.pt`` (every part's config and weights,
optimizer, EMA, RNG; the init model is not needed again) or, on a fresh machine, from the
exported pipeline alone. SIGTERM/SIGINT stop after the current step with the state saved and the
weights exported. Exports are fp16 safetensors in shards under 8 MB, written beside the target
folder and swapped in.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import edits, world
from .export import partial_folder, publish, run_steps, train_from
from .model import pin_posterior_std
from .train import (
    EMA,
    autocast,
    batch_stream,
    channels_first,
    fix_tokenizer_class,
    optimizer_step,
    snr_loss_weight,
    to_unit,
    train_device,
)


@dataclass
class EditTrainConfig:
    init: str = "checkpoints/vgen-shapes"
    out: str = "checkpoints/vgen-shapes-edit"
    state_dir: str = "runs/vgen-shapes-edit"
    steps: int = 10000
    batch: int = 32
    lr: float = 2e-4  # a fine-tune: below the text-to-image run's 5e-4
    warmup: int = 200
    cond_dropout: float = 0.05  # each of: no instruction, no source image, neither
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    snr_floor: float = 1.0  # see train.snr_loss_weight; 1 from step 6005 on (0 before)
    # How often each edit kind is drawn (the others: 1). Uniform up to step 12638; then the
    # kinds the eval found weakest at step 11200 (move 0.0, add 0.2, remove 0.33) twice or 1.5x
    # as often, since the bar asks for every kind; from step 16587 move 3x (0.067 at step
    # 16500, its failures moved the wrong way or lost the object's size); from step 21900 the
    # weakest at step 21900 (recolor 0.533, add 0.600) 2.5x, move (0.800) and resize 1.5x;
    # from step 29984 add 3x (0.625 at n=40, the weakest kind); from step 46440 by the failures
    # at step 46440 over both eval case sets (n=80 per kind): reshape 15, move 14, recolor 13,
    # remove 12, add 8, resize 8.
    kind_weights: dict = field(default_factory=lambda: {"recolor": 2.5, "add": 2.0, "remove": 1.5,
                                                        "move": 2.0, "reshape": 2.0, "resize": 1.5})
    # From step 22246: this share of the edits that name an object are drawn so that the name
    # needs the object's size or position (a look-alike in the scene; about 30 % by chance).
    # At step 21900 most recolor and resize failures were such names ("the big orange circle"
    # changed the small one too), while remove, trained on more of them, got them right.
    hard_refs: float = 0.4
    # From step 29984: the share of training adds that name a place (before, and in the eval:
    # edits.PLACED_ADDS, 0.6). At step 29984, 11 of the 15 add failures (n=40) were placed adds
    # with no such object in the named third ("insert a small pink square at the bottom").
    placed_adds: float = 0.85
    decay_start: int | None = None  # cosine decay from here to ``steps`` (train.learning_rate)
    lr_min_ratio: float = 0.1
    save_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: str = "auto"  # as train.TrainConfig's, with bf16 autocast on CUDA
    workers: int = 0  # processes making batches (train.batch_stream)
    minutes: float | None = None  # a wall-clock budget (train.TimeBudget)


# ---- building the editor from the text-to-image model --------------------------------------------

def extend_tokenizer(tok, words: list[str]):
    """The same word-level tokenizer (normalizer, pre-tokenizer, special tokens, max length)
    with ``words`` it lacks appended: every old word keeps its id, so the text encoder's trained
    embedding rows stay where they are and the new ones go at the end."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for w in words:
        if w not in vocab:
            vocab[w] = len(vocab)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=tok.bos_token, eos_token=tok.eos_token, unk_token=tok.unk_token,
        pad_token=tok.pad_token, model_max_length=tok.model_max_length,
    )


def widen_conv_in(unet, in_channels: int = 8):
    """A copy of ``unet`` taking ``in_channels`` inputs; the extra input channels start at
    zero weight, so the widened UNet computes exactly what the original did."""
    from diffusers import UNet2DConditionModel

    wide = UNet2DConditionModel.from_config(unet.config, in_channels=in_channels)
    state = unet.state_dict()
    w = state["conv_in.weight"]  # (C, 4, 3, 3)
    extra = torch.zeros(w.shape[0], in_channels - w.shape[1], *w.shape[2:], dtype=w.dtype)
    state["conv_in.weight"] = torch.cat([w, extra], dim=1)  # (C, 8, 3, 3)
    wide.load_state_dict(state)
    return wide


def train_scheduler_for(sample_scheduler):
    """A DDPM training schedule with the sampler's betas and prediction type."""
    from diffusers import DDPMScheduler

    c = sample_scheduler.config
    return DDPMScheduler(
        num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start, beta_end=c.beta_end,
        beta_schedule=c.beta_schedule, trained_betas=c.trained_betas,
        prediction_type=c.prediction_type, clip_sample=False,
    )


def _quiet_loading() -> None:
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()


def _load(cls, folder: str | Path, tries: int = 5):
    """``cls.from_pretrained(folder)`` in fp32, retried briefly: the text-to-image run swaps in
    a fresh export now and then, and the folder is missing for that moment."""
    for attempt in range(tries):
        try:
            return cls.from_pretrained(str(folder), dtype=torch.float32)
        except (OSError, ValueError):
            if attempt == tries - 1:
                raise
            time.sleep(2.0)


def init_folder(ref: str) -> Path:
    """A folder path as given, else a model reference (a name under checkpoints/, a Hub id)."""
    if Path(ref).is_dir():
        return Path(ref)
    from ..hub import parse_reference, resolve

    return Path(resolve(parse_reference(ref)).path)


# ---- the trainer ------------------------------------------------------------------------------

def edit_batch(rng: random.Random, batch: int, kind_weights: dict | None, hard_refs: float = 0.0,
               placed_adds: float = edits.PLACED_ADDS):
    """One batch of edit triples (``edits.sample_batch``): the after and the before images
    stacked, uint8 (2B, 3, 64, 64), and the B instructions."""
    before, texts, after = edits.sample_batch(rng, batch, kind_weights, hard_refs, placed_adds)
    return channels_first(np.concatenate([after, before])), texts


def save_pipeline_state(trainer, **extra) -> None:
    """Write a pipeline trainer's resumable state (its tokenizer, text encoder, VAE, UNet and
    scheduler with their configs, optimizer, EMA, step, RNGs; plus ``extra``) to
    ``trainer.state_path``, atomically: a kill mid-save never corrupts the state. Shared by the
    editor's and the grounded generator's trainers."""
    t = trainer
    t.state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = t.state_path.with_suffix(".tmp")
    torch.save(
        {
            "tokenizer": t.tok.backend_tokenizer.to_str(),
            "tokenizer_special": dict(
                bos_token=t.tok.bos_token, eos_token=t.tok.eos_token,
                unk_token=t.tok.unk_token, pad_token=t.tok.pad_token,
                model_max_length=t.tok.model_max_length),
            "text_config": t.text.config.to_dict(), "text": t.text.state_dict(),
            "vae_config": dict(t.vae.config), "vae": t.vae.state_dict(),
            "unet_config": dict(t.unet.config), "unet": t.unet.state_dict(),
            "scheduler_config": dict(t.sample_scheduler.config),
            "opt": t.opt.state_dict(), "ema": t.ema.shadow, "step": t.step,
            "warmup_from": t.warmup_from, "init_info": t.init_info,
            "rng": t.rng.getstate(), "torch_rng": torch.get_rng_state(), **extra,
        },
        tmp,
    )
    tmp.replace(t.state_path)


def load_pipeline_state(path: Path):
    """The state :func:`save_pipeline_state` wrote, and the parts rebuilt from it: ``(state,
    tokenizer, text encoder, VAE, UNet)``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from tokenizers import Tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    st = torch.load(path, weights_only=False, map_location="cpu")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(st["tokenizer"]),
                                  **st["tokenizer_special"])
    text = CLIPTextModel(CLIPTextConfig.from_dict(st["text_config"]))
    vae = AutoencoderKL.from_config(st["vae_config"])
    unet = UNet2DConditionModel.from_config(st["unet_config"])
    text.load_state_dict(st["text"])
    vae.load_state_dict(st["vae"])
    unet.load_state_dict(st["unet"])
    return st, tok, text, vae, unet


def restore_run(trainer, st: dict, optimizer: bool = True) -> None:
    """Put a run's own part of a saved state (EMA, step, RNGs, and the optimizer unless
    ``optimizer`` is False: a fresh one then warms up again from this step) back in ``trainer``."""
    t = trainer
    t.ema.shadow = [s.to(t.device) for s in st["ema"]]
    t.step, t.init_info = st["step"], st["init_info"]
    t.warmup_from = t.step
    if optimizer:
        t.opt.load_state_dict(st["opt"])
        t.warmup_from = st.get("warmup_from", 0)
    t.rng.setstate(st["rng"])
    torch.set_rng_state(st["torch_rng"])
    t.log(f"resumed from {t.state_path}: step {t.step}")


class EditTrainer:
    def __init__(self, cfg: EditTrainConfig, log=print):
        self.cfg, self.log = cfg, log
        torch.manual_seed(cfg.seed)
        _quiet_loading()
        self.device = train_device(cfg.device)
        self.step = 0
        self.warmup_from = 0  # the step the optimizer state was created (train.learning_rate)
        self.rng = random.Random(cfg.seed)
        self.state_path = Path(cfg.state_dir) / "state.pt"
        self.init_info: dict = {}

    # -- setup ------------------------------------------------------------------------------
    def _set_parts(self, tok, text, vae, unet, sample_scheduler) -> None:
        self.tok, self.text, self.vae, self.unet = (tok, text.to(self.device), vae.to(self.device),
                                                    unet.to(self.device))
        self.sample_scheduler = sample_scheduler
        self.noise = train_scheduler_for(sample_scheduler)
        self.alphas_cumprod = self.noise.alphas_cumprod.to(self.device)  # (T,)
        self.vae.requires_grad_(False).eval()
        params = self._params()
        self.opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=0.01)
        self.ema = EMA(params, self.cfg.ema_decay)

    def _params(self):
        return list(self.unet.parameters()) + list(self.text.parameters())

    def start_from_init(self) -> None:
        """Step 1 of the module docstring: the editor built from the text-to-image model."""
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        folder = init_folder(self.cfg.init)
        t2i = _load(StableDiffusionPipeline, folder)
        tok = extend_tokenizer(t2i.tokenizer, edits.vocabulary())
        text = t2i.text_encoder
        text.resize_token_embeddings(len(tok))
        unet = widen_conv_in(t2i.unet, 2 * t2i.vae.config.latent_channels)
        scheduler = DPMSolverMultistepScheduler.from_config(t2i.scheduler.config)
        self._set_parts(tok, text, t2i.vae, unet, scheduler)
        meta = folder / "training.json"
        self.init_info = {"init": str(self.cfg.init),
                          "init_step": json.loads(meta.read_text()).get("step") if meta.exists() else None}
        self.log(f"initialised from {folder} (text-to-image step {self.init_info['init_step']}); "
                 f"vocabulary {len(t2i.tokenizer)} -> {len(tok)} words")

    def resume(self, reset_optimizer: bool = False) -> bool:
        """Restore from the full training state, or else from the exported pipeline (with a fresh
        optimizer). ``reset_optimizer`` drops a saved optimizer state too (train.Trainer.resume)."""
        if self.state_path.exists():
            from diffusers import DPMSolverMultistepScheduler

            st, tok, text, vae, unet = load_pipeline_state(self.state_path)
            self._set_parts(tok, text, vae, unet,
                            DPMSolverMultistepScheduler.from_config(st["scheduler_config"]))
            restore_run(self, st, optimizer=not reset_optimizer)
            return True
        info = Path(self.cfg.out) / "training.json"
        if info.exists():
            from diffusers import StableDiffusionInstructPix2PixPipeline

            meta = json.loads(info.read_text())
            pipe = _load(StableDiffusionInstructPix2PixPipeline, self.cfg.out)
            self._set_parts(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, pipe.scheduler)
            self.step = self.warmup_from = meta["step"]
            self.init_info = {k: meta.get(k) for k in ("init", "init_step")}
            self.rng = random.Random(self.cfg.seed + self.step)
            self.log(f"resumed from exported weights in {self.cfg.out}: step {self.step}")
            return True
        return False

    def save_state(self) -> None:
        save_pipeline_state(self)

    # -- one step -------------------------------------------------------------------------------
    def batches(self):
        """Batches of :func:`edit_batch`, see ``train.batch_stream``."""
        c = self.cfg
        make = functools.partial(edit_batch, batch=c.batch, kind_weights=c.kind_weights,
                                 hard_refs=c.hard_refs, placed_adds=c.placed_adds)
        return batch_stream(make, self.rng, c.workers, f"edit:{c.seed}:{self.step}")

    def step_once(self, batch) -> float:
        c, dev = self.cfg, self.device
        # 1. Fresh edit triples: after and before images stacked (2B, 3, 64, 64), B instructions.
        images, texts = batch
        b = len(texts)
        # 2. Latents: the target scaled for diffusion; the source as the pipeline encodes it
        #    (posterior mode, unscaled: StableDiffusionInstructPix2PixPipeline.prepare_image_latents).
        with torch.no_grad():
            both = self.vae.encode(to_unit(images.to(dev))).latent_dist.mode()  # (2B, 4, 16, 16)
            z0 = both[:b] * self.vae.config.scaling_factor  # (B, 4, 16, 16)
            source = both[b:]  # (B, 4, 16, 16)
        # 3. Conditioning dropout: p < q drops the instruction, q <= p < 2q both, 2q <= p < 3q
        #    the source (zeros, as the pipeline's unconditional image branch).
        p = torch.rand(b)
        q = c.cond_dropout
        drop_text = p < 2 * q
        keep_image = ~((p >= q) & (p < 3 * q))
        source = source * keep_image[:, None, None, None].float().to(dev)
        texts = ["" if d else t for t, d in zip(texts, drop_text.tolist())]
        ids = self.tok(texts, padding="max_length", max_length=self.tok.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(dev)  # (B, 32)
        # 4. v-prediction on the init model's schedule, min-SNR-gamma / truncated-SNR weighted.
        noise = torch.randn_like(z0)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (b,), device=dev)
        zt = self.noise.add_noise(z0, noise, t)
        target = (self.noise.get_velocity(z0, noise, t)
                  if self.noise.config.prediction_type == "v_prediction" else noise)
        with autocast(dev):
            cond = self.text(ids).last_hidden_state  # (B, 32, D)
            pred = self.unet(torch.cat([zt, source], dim=1), t, cond).sample  # (B, 4, 16, 16)
        w = snr_loss_weight(self.alphas_cumprod[t], self.noise.config.prediction_type,
                            c.min_snr_gamma, c.snr_floor)  # (B,)
        loss = (w * ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))).mean()
        # 5. AdamW with linear warmup, clipped gradients, EMA.
        optimizer_step(self, loss, self._params())
        return loss.item()

    # -- export -----------------------------------------------------------------------------------
    def export(self, out: str | Path | None = None):
        """Write the pipeline (EMA weights) with save_pretrained: fp16 safetensors in shards
        under 8 MB, so the model stays under 20 MB with no file over 10 MB."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        from .card_edit import write_card

        final = Path(out or self.cfg.out)
        tmp = partial_folder(final)
        text, unet = copy.deepcopy(self.text), copy.deepcopy(self.unet)
        self.ema.copy_to(list(unet.parameters()) + list(text.parameters()))
        pipe = StableDiffusionInstructPix2PixPipeline(
            vae=pin_posterior_std(copy.deepcopy(self.vae)), text_encoder=text, tokenizer=self.tok, unet=unet,
            scheduler=copy.deepcopy(self.sample_scheduler), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        ).to(torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True, max_shard_size="8MB")
        fix_tokenizer_class(tmp)
        meta = {
            "step": self.step, "batch": self.cfg.batch, "samples_seen": self.step * self.cfg.batch,
            "world_spec": world.SPEC_VERSION, "edit_kinds": list(edits.KINDS),
            **self.init_info, "config": asdict(self.cfg),
        }
        publish(tmp, final, meta, write_card)
        return pipe

    # -- loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        self.text.train()
        self.unet.train()
        run_steps(self, export_on_save=True)


def train_edit(cfg: EditTrainConfig, resume: bool = False, log=print,
               reset_optimizer: bool = False) -> EditTrainer:
    """Entry point of ``python -m vgen train edit``."""
    trainer = EditTrainer(cfg, log=log)
    return train_from(trainer, resume, "the text-to-image model", lambda: trainer.resume(reset_optimizer))
