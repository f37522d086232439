"""Train the grounded shapes model: ``python -m vgen train grounded [--minutes M] [--resume]``.

A GLIGEN model (Li et al. 2023) fine-tuned from the embedded text-to-image model on the shapes
world's (scene, caption, exact boxes), saved as a stock diffusers ``StableDiffusionGLIGENPipeline``
(``gligen_phrases`` / ``gligen_boxes``):

1. start from the text-to-image model (``checkpoints/vgen-shapes``, read once): its tokenizer
   (the end token moved to the last id, ``gligen.move_eos_last``, so the pooled phrase
   embedding the pipeline uses is taken at the end token), text encoder, VAE and UNet; the UNet
   rebuilt with ``attention_type="gated"``, every weight copied, the gated self-attention layers
   and the ``position_net`` new with their gates at zero, so step 0 draws what the
   text-to-image model draws;
2. as GLIGEN does, train only the new layers (the base model stays frozen, so with the
   grounding off — the pipeline's ``gligen_scheduled_sampling_beta`` — the later steps run the
   unchanged text-to-image model): v-prediction on the init model's schedule, min-SNR /
   truncated-SNR weighting, EMA weights; each training image comes with its caption (the text
   trainer's own data pipeline, ``train.sample_batch``, caption dropout included) and every
   object's phrase and exact box, encoded as the pipeline encodes them.

State: ``runs/grounded/state.pt`` every ``save_every`` steps (weights, optimizer, EMA, RNG;
resumable with ``--resume``, never committed). The model folder is written only when the run
ends (its step budget or ``--minutes``, or SIGTERM/SIGINT), beside its final place and swapped
in whole: an interrupted run never leaves a half-changed checkpoint.
"""

from __future__ import annotations

import copy
import functools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import box_attention, gligen, world
from .export import export_saved_state, partial_folder, publish, run_steps, train_from
from .model import pin_posterior_std
from .train import (
    EMA,
    autocast,
    batch_stream,
    channels_first,
    fix_tokenizer_class,
    optimizer_step,
    sample_batch,
    snr_loss_weight,
    to_unit,
    train_device,
)
from .train_edit import (
    init_folder,
    load_pipeline_state,
    restore_run,
    save_pipeline_state,
    train_scheduler_for,
)

DEFAULT_BETA = 0.3  # diffusers' gligen_scheduled_sampling_beta default, until the eval picks one


@dataclass
class GroundedTrainConfig:
    init: str = "checkpoints/vgen-shapes"
    out: str = "checkpoints/vgen-shapes-grounded"
    state_dir: str = "runs/grounded"
    steps: int = 3000
    batch: int = 32
    lr: float = 5e-4  # the new layers only; the base model stays frozen (GLIGEN)
    gate_lr_mult: float = 5.0  # the zero-initialised gates: Adam moves a scalar ~lr a step
    warmup: int = 100
    cfg_dropout: float = 0.3  # caption dropout: a third of the steps the grounding alone says what is where
    repeat_prob: float = 0.5  # the text-to-image run's data mix (train.TrainConfig)
    phrase_prob: float = 0.8
    ema_decay: float = 0.998
    min_snr_gamma: float = 5.0
    snr_floor: float = 1.0
    # The share of examples whose noise level is drawn from the noisier half of the schedule
    # (t >= 500) rather than all of it: the pipeline grounds only the first
    # gligen_scheduled_sampling_beta of the sampling steps, the noisiest, where the layout of
    # the picture is decided; on a CPU budget the fusers train mostly where they are used.
    high_noise_share: float = 0.5
    # The weight of the box-attention loss on the fusers (vgen.shapes.box_attention); 0: GLIGEN's
    # denoising loss alone.
    box_attention_weight: float = 0.5
    decay_start: int | None = None  # cosine decay from here to ``steps`` (train.learning_rate)
    lr_min_ratio: float = 0.1
    save_every: int = 100  # resumable state (runs/), not an export
    log_every: int = 25
    seed: int = 0
    beta: float = DEFAULT_BETA  # the card's gligen_scheduled_sampling_beta
    device: str = "auto"
    workers: int = 0
    minutes: float | None = None  # a wall-clock budget (train.TimeBudget)


def grounded_batch(rng: random.Random, batch: int, cfg_dropout: float, repeat_prob: float,
                   phrase_prob: float):
    """One batch: uint8 images (B, 3, 64, 64), B captions ("" for the dropped ones), and each
    image's layout as JSON text (phrases worded at random, exact boxes; cheap to pass between
    processes)."""
    images, texts, scenes = sample_batch(rng, batch, cfg_dropout, with_scenes=True,
                                         repeat_prob=repeat_prob, phrase_prob=phrase_prob)
    layouts = [gligen.scene_layout(s, rng).to_json() for s in scenes]
    return channels_first(images), texts, layouts


class GroundedTrainer:
    def __init__(self, cfg: GroundedTrainConfig, log=print):
        self.cfg, self.log = cfg, log
        torch.manual_seed(cfg.seed)
        gligen.quiet_loading()
        self.device = train_device(cfg.device)
        self.step = 0
        self.warmup_from = 0
        self.rng = random.Random(cfg.seed)
        self.state_path = Path(cfg.state_dir) / "state.pt"
        self.init_info: dict = {}
        self.phrase_cache: dict[str, torch.Tensor] = {}
        self.last_box_loss = torch.zeros(())

    # -- setup ----------------------------------------------------------------------------------
    def _set_parts(self, tok, text, vae, unet, sample_scheduler) -> None:
        dev = self.device
        self.tok, self.text, self.vae, self.unet = tok, text.to(dev), vae.to(dev), unet.to(dev)
        self.sample_scheduler = sample_scheduler
        self.noise = train_scheduler_for(sample_scheduler)
        self.alphas_cumprod = self.noise.alphas_cumprod.to(dev)
        for part in (self.text, self.vae, self.unet):
            part.requires_grad_(False).eval()
        named = gligen.new_parameters(self.unet)
        for _, p in named:
            p.requires_grad_(True)
        gates = [p for n, p in named if n.endswith(("alpha_attn", "alpha_dense"))]
        rest = [p for n, p in named if not n.endswith(("alpha_attn", "alpha_dense"))]
        self.params = rest + gates
        self.opt = torch.optim.AdamW(
            [{"params": rest, "lr_mult": 1.0},
             {"params": gates, "lr_mult": self.cfg.gate_lr_mult, "weight_decay": 0.0}],
            lr=self.cfg.lr, weight_decay=0.01)
        self.ema = EMA(self.params, self.cfg.ema_decay)
        self.phrase_cache = {}

    def start_from_init(self) -> None:
        """Step 1 of the module docstring; from a grounded model (``--init`` a GLIGEN folder), its
        GLIGEN layers as they are (a run continued where the last one's state is gone)."""
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        folder = init_folder(self.cfg.init)
        meta = json.loads((folder / "training.json").read_text()) if (folder / "training.json").exists() else {}
        if _is_grounded(folder):
            # A grounded model (e.g. the shipped one, on a machine where this run's state is
            # gone): its GLIGEN layers go on training; its base is the one it was built from.
            from diffusers import StableDiffusionGLIGENPipeline

            g = StableDiffusionGLIGENPipeline.from_pretrained(str(folder), dtype=torch.float32)
            self._set_parts(g.tokenizer, g.text_encoder, g.vae, g.unet,
                            DPMSolverMultistepScheduler.from_config(g.scheduler.config))
            self.init_info = {"init": meta.get("init", str(self.cfg.init)), "init_step": meta.get("init_step"),
                              "continued_from": str(self.cfg.init), "continued_from_step": meta.get("step")}
            # Steps count on from the model's (``--steps`` is the total); a fresh optimizer
            # warms up again from here.
            self.step = self.warmup_from = int(meta.get("step") or 0)
        else:
            t2i = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
            tok, text = gligen.move_eos_last(t2i.tokenizer, t2i.text_encoder)
            unet = gligen.gated_unet(t2i.unet)
            self._set_parts(tok, text, t2i.vae, unet,
                            DPMSolverMultistepScheduler.from_config(t2i.scheduler.config))
            self.init_info = {"init": str(self.cfg.init), "init_step": meta.get("step")}
        n_new = sum(p.numel() for p in self.params)
        n_all = sum(p.numel() for p in self.unet.parameters())
        self.log(f"initialised from {folder} (text-to-image step {self.init_info['init_step']}); "
                 f"gated UNet {n_all / 1e6:.2f} M parameters, {n_new / 1e6:.2f} M new (trained)")

    def resume(self) -> bool:
        """Restore from the saved training state (every part, optimizer, EMA, RNG)."""
        if not self.state_path.exists():
            return False
        from diffusers import DPMSolverMultistepScheduler

        st, tok, text, vae, unet = load_pipeline_state(self.state_path)
        self._set_parts(tok, text, vae, unet,
                        DPMSolverMultistepScheduler.from_config(st["scheduler_config"]))
        restore_run(self, st)
        return True

    def save_state(self) -> None:
        save_pipeline_state(self)

    # -- one step -------------------------------------------------------------------------------
    def batches(self):
        c = self.cfg
        make = functools.partial(grounded_batch, batch=c.batch, cfg_dropout=c.cfg_dropout,
                                 repeat_prob=c.repeat_prob, phrase_prob=c.phrase_prob)
        return batch_stream(make, self.rng, c.workers, f"grounded:{c.seed}:{self.step}")

    def phrase_embeddings(self, phrases) -> dict:
        """Pooled phrase embeddings, computed once per phrase (the text encoder is frozen; the
        world has a few hundred phrasings)."""
        new = sorted({p for p in phrases if p not in self.phrase_cache})
        if new:
            for p, e in zip(new, gligen.encode_phrases(self.tok, self.text, new)):
                self.phrase_cache[p] = e
        return self.phrase_cache

    def step_once(self, batch) -> float:
        from ..layout import Layout

        c, dev = self.cfg, self.device
        images, texts, layout_json = batch
        layouts = [Layout.from_json(j) for j in layout_json]
        b = len(texts)
        with torch.no_grad():
            z0 = self.vae.encode(to_unit(images.to(dev))).latent_dist.mean
            z0 = z0 * self.vae.config.scaling_factor  # (B, 4, 16, 16)
            ids = self.tok(texts, padding="max_length", max_length=self.tok.model_max_length,
                           truncation=True, return_tensors="pt").input_ids.to(dev)
            cond = self.text(ids).last_hidden_state  # (B, 32, D)
            emb = self.phrase_embeddings([p for lay in layouts for p in lay.phrases])
            grounding = gligen.gligen_kwargs(layouts, emb, self.unet.config.cross_attention_dim,
                                             dev, z0.dtype)
        noise = torch.randn_like(z0)
        n_t = self.noise.config.num_train_timesteps
        t = torch.randint(0, n_t, (b,), device=dev)
        high = torch.rand(b, device=dev) < c.high_noise_share
        t = torch.where(high, torch.randint(n_t // 2, n_t, (b,), device=dev), t)
        zt = self.noise.add_noise(z0, noise, t)
        target = (self.noise.get_velocity(z0, noise, t)
                  if self.noise.config.prediction_type == "v_prediction" else noise)
        store, previous = (box_attention.install(self.unet, gligen.MAX_OBJS)
                           if c.box_attention_weight > 0 else (None, None))
        try:
            with autocast(dev):
                pred = self.unet(zt, t, cond, cross_attention_kwargs={"gligen": grounding}).sample
        finally:
            if previous is not None:
                box_attention.restore(self.unet, previous)
        w = snr_loss_weight(self.alphas_cumprod[t], self.noise.config.prediction_type,
                            c.min_snr_gamma, c.snr_floor)
        loss = (w * ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))).mean()
        if store is not None:
            box_loss = box_attention.box_attention_loss(store, grounding["boxes"], grounding["masks"])
            loss = loss + c.box_attention_weight * box_loss
            self.last_box_loss = box_loss.detach()
        optimizer_step(self, loss, self.params)  # the gates' group at gate_lr_mult
        return loss.item()

    def gates(self) -> float:
        """Mean |tanh(alpha)| of the gated layers: how much the grounding is let in."""
        vals = [p.detach().tanh().abs().item() for n, p in self.unet.named_parameters()
                if n.endswith(("alpha_attn", "alpha_dense"))]
        return float(np.mean(vals)) if vals else 0.0

    # -- export -----------------------------------------------------------------------------------
    def export(self, out: str | Path | None = None):
        """The pipeline (EMA weights of the new layers) as fp16 safetensors in shards under 8 MB:
        under 25 MB in all, no file over 10 MB."""
        from diffusers import StableDiffusionGLIGENPipeline

        from .card_grounded import write_card

        final = Path(out or self.cfg.out)
        tmp = partial_folder(final)
        unet = copy.deepcopy(self.unet)
        trained = [p for _, p in gligen.new_parameters(unet)]
        names = [n for n, _ in gligen.new_parameters(unet)]
        order = ([p for n, p in zip(names, trained) if not n.endswith(("alpha_attn", "alpha_dense"))]
                 + [p for n, p in zip(names, trained) if n.endswith(("alpha_attn", "alpha_dense"))])
        self.ema.copy_to(order)
        pipe = StableDiffusionGLIGENPipeline(
            vae=pin_posterior_std(copy.deepcopy(self.vae)), text_encoder=copy.deepcopy(self.text),
            tokenizer=self.tok, unet=unet, scheduler=copy.deepcopy(self.sample_scheduler),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        ).to(torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True, max_shard_size="8MB")
        fix_tokenizer_class(tmp)
        meta = {
            "step": self.step, "batch": self.cfg.batch, "samples_seen": self.step * self.cfg.batch,
            "world_spec": world.SPEC_VERSION, "trained": "GLIGEN layers only (fusers, position_net)",
            **self.init_info, "config": asdict(self.cfg),
        }
        publish(tmp, final, meta, write_card)
        return pipe

    # -- loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        run_steps(self, status=lambda: f" gates {self.gates():.3f} box attention {float(self.last_box_loss):.3f}")


def _is_grounded(folder: Path) -> bool:
    cfg = folder / "unet" / "config.json"
    return cfg.exists() and str(json.loads(cfg.read_text()).get("attention_type", "")).startswith("gated")


def export_from_state(state_dir: str | Path, out: str | Path, log=print) -> Path:
    """``export.export_saved_state`` of a grounded run."""
    cfg = GroundedTrainConfig(state_dir=str(state_dir), out=str(out))
    return export_saved_state(GroundedTrainer(cfg, log=log), out)


def train_grounded(cfg: GroundedTrainConfig, resume: bool = False, log=print) -> GroundedTrainer:
    """Entry point of ``python -m vgen train grounded``."""
    return train_from(GroundedTrainer(cfg, log=log), resume, "the text-to-image model")
