"""Distil the embedded model into a fast one: ``python -m vgen train distilled [--minutes M] [--resume]``.

Guidance distillation and one round of progressive distillation together, as the second stage of
Meng et al. 2023 ("On Distillation of Guided Diffusion Models") does; the step halving is
Salimans & Ho 2022 ("Progressive Distillation for Fast Sampling of Diffusion Models", Alg. 2):

1. the teacher is the embedded text-to-image model (``checkpoints/vgen-shapes``), frozen, drawn
   with classifier-free guidance ``g`` (two UNet branches a step) on a DDIM grid of
   ``2 * student_steps`` steps;
2. the student is its UNet with a guidance embedding (diffusers' ``time_cond_proj_dim``, the one
   the stock ``StableDiffusionPipeline`` feeds ``guidance_scale - 1`` to, as it does for LCM
   models), every weight copied and the new projection at zero, so step 0 predicts what the
   teacher's conditional branch predicts; it runs one branch a step, with no unconditional batch
   (a teacher that is itself a student, ``--init checkpoints/vgen-shapes-distilled``, has its
   guidance embedding already: a further round halves the steps again, Salimans & Ho's loop);
3. each example: a training image noised to a step ``t`` of the student's DDIM grid, a guidance
   scale ``g``; the teacher's two guided DDIM steps ``t -> t - d -> t - 2d`` land on ``z''``, and
   the student's target is the clean image ``x~`` from which one DDIM step from ``t`` lands on
   the same ``z''`` (Alg. 2's target); its loss is the v-space MSE to that target with the
   truncated-SNR weight ``max(snr, 1)`` of the x-space error (sec. 4);
4. EMA weights are exported as a stock ``StableDiffusionPipeline`` with a trailing-spacing DDIM
   scheduler: the student draws in ``student_steps`` steps, half the teacher's, each a batch of
   one.

The text encoder, tokenizer and VAE are the teacher's, unchanged.

State: ``runs/distilled/state.pt`` every ``save_every`` steps (weights, optimizer, EMA, RNG;
resumable with ``--resume``, never committed). The model folder is written only when the run
ends, beside its final place and swapped in whole (``export.publish``).
"""

from __future__ import annotations

import copy
import functools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import world
from .export import export_saved_state, partial_folder, publish, run_steps, train_from
from .model import pin_posterior_std
from .train import (
    EMA,
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

GUIDANCE_EMBED_DIM = 256  # the width of the guidance embedding (diffusers' ``time_cond_proj_dim``)


@dataclass
class DistillConfig:
    init: str = "checkpoints/vgen-shapes"
    out: str = "checkpoints/vgen-shapes-distilled"
    state_dir: str = "runs/distilled"
    student_steps: int = 10  # the teacher draws in twice as many
    steps: int = 2000
    batch: int = 32
    lr: float = 1e-4  # a fine-tune of the teacher's weights
    warmup: int = 100
    guidance_min: float = 1.0
    guidance_max: float = 8.0
    default_guidance: float = 4.0  # the app's default (vgen.catalog): a share of the examples use it
    default_guidance_share: float = 0.5
    cfg_dropout: float = 0.1  # some empty captions: the student's unconditional score
    repeat_prob: float = 0.5  # the text-to-image run's data mix (train.TrainConfig)
    phrase_prob: float = 0.8
    ema_decay: float = 0.998
    decay_start: int | None = None  # cosine decay from here to ``steps`` (train.learning_rate)
    lr_min_ratio: float = 0.1
    save_every: int = 50  # resumable state (runs/), not an export
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    minutes: float | None = None  # a wall-clock budget (train.TimeBudget)


def distill_batch(rng: random.Random, batch: int, cfg_dropout: float, repeat_prob: float,
                  phrase_prob: float):
    """Fresh scenes and captions (``train.sample_batch``): uint8 images (B, 3, 64, 64), B texts."""
    images, texts = sample_batch(rng, batch, cfg_dropout, repeat_prob=repeat_prob, phrase_prob=phrase_prob)
    return channels_first(images), texts


def takes_guidance(unet) -> bool:
    """Whether ``unet`` takes the guidance scale as an input (a student of an earlier round)."""
    return getattr(unet.config, "time_cond_proj_dim", None) is not None


def student_unet(teacher_unet, embed_dim: int = GUIDANCE_EMBED_DIM):
    """Step 2: the teacher's UNet with a guidance embedding, its projection at zero; a copy of a
    teacher that has one already (a further round halves a student's steps again)."""
    from diffusers import UNet2DConditionModel

    if takes_guidance(teacher_unet):
        return copy.deepcopy(teacher_unet)
    config = {k: v for k, v in dict(teacher_unet.config).items() if not k.startswith("_")}
    student = UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": embed_dim})
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    if unexpected or missing != ["time_embedding.cond_proj.weight"]:
        raise RuntimeError(f"student UNet does not match the teacher's: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def ddim_step(z: torch.Tensor, v: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step (Song et al. 2021) of a v-prediction model from ``alpha_bar``
    ``a_t`` to ``a_s`` (each (B, 1, 1, 1))."""
    x0 = a_t.sqrt() * z - (1 - a_t).sqrt() * v  # (B, 4, 16, 16)
    eps = (1 - a_t).sqrt() * z + a_t.sqrt() * v
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def student_target(z_t, z_s, a_t, a_s):
    """Salimans & Ho's Alg. 2 target: the clean image ``x~`` from which one DDIM step from
    ``z_t`` (at ``a_t``) lands on the teacher's ``z_s`` (at ``a_s``), as the v the student should
    predict at ``z_t``."""
    ratio = (1 - a_s).sqrt() / (1 - a_t).sqrt()  # sigma_s / sigma_t
    x = (z_s - ratio * z_t) / (a_s.sqrt() - ratio * a_t.sqrt())
    return (a_t.sqrt() * z_t - x) / (1 - a_t).sqrt()


class DistillTrainer:
    def __init__(self, cfg: DistillConfig, log=print):
        self.cfg, self.log = cfg, log
        torch.manual_seed(cfg.seed)
        self.device = train_device(cfg.device)
        self.step = self.warmup_from = 0
        self.rng = random.Random(cfg.seed)
        self.state_path = Path(cfg.state_dir) / "state.pt"
        self.init_info: dict = {}

    # -- setup ----------------------------------------------------------------------------------
    def _set_parts(self, teacher, student) -> None:
        """``teacher``: the init pipeline (its text encoder, VAE, tokenizer and scheduler are the
        student's too); ``student``: the UNet to train."""
        dev = self.device
        self.teacher = teacher
        self.tok, self.text, self.vae = teacher.tokenizer, teacher.text_encoder.to(dev), teacher.vae.to(dev)
        self.teacher_unet, self.unet = teacher.unet.to(dev), student.to(dev)
        for part in (self.text, self.vae, self.teacher_unet):
            part.requires_grad_(False).eval()
        self.unet.train()
        self.sample_scheduler = teacher.scheduler
        self.noise = train_scheduler_for(teacher.scheduler)
        ac = self.noise.alphas_cumprod.to(dev)
        self.abar = torch.cat([ac, ac.new_ones(1)])  # index -1: DDIM's final alpha_bar, 1
        n_t = self.noise.config.num_train_timesteps
        self.stride = n_t // (2 * self.cfg.student_steps)  # the teacher's step
        self.grid = torch.arange(n_t - 1, 0, -2 * self.stride, device=dev)  # trailing DDIM grid
        self.params = list(self.unet.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=0.0)
        self.ema = EMA(self.params, self.cfg.ema_decay)
        self.empty = None  # the empty caption's embedding (1, 32, D): the text encoder is frozen

    def _teacher_pipe(self):
        from diffusers import StableDiffusionPipeline

        folder = init_folder(self.cfg.init)
        meta = json.loads((folder / "training.json").read_text()) if (folder / "training.json").exists() else {}
        return StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32), folder, meta

    def start_from_init(self) -> None:
        """Steps 1-2 of the module docstring."""
        teacher, folder, meta = self._teacher_pipe()
        self._set_parts(teacher, student_unet(teacher.unet))
        self.init_info = {"init": str(self.cfg.init), "init_step": meta.get("step")}
        self.log(f"teacher {folder} (step {meta.get('step')}); student UNet "
                 f"{sum(p.numel() for p in self.params) / 1e6:.2f} M parameters, "
                 f"{self.cfg.student_steps} steps against the teacher's {2 * self.cfg.student_steps}")

    def resume(self) -> bool:
        """Restore from the saved training state (the student, optimizer, EMA, RNG); the teacher
        is read from ``init`` again."""
        if not self.state_path.exists():
            return False
        st, _tok, _text, _vae, unet = load_pipeline_state(self.state_path)
        teacher, _, _ = self._teacher_pipe()
        self._set_parts(teacher, unet)
        restore_run(self, st)
        return True

    def save_state(self) -> None:
        save_pipeline_state(self)

    # -- one step -------------------------------------------------------------------------------
    def batches(self):
        c = self.cfg
        make = functools.partial(distill_batch, batch=c.batch, cfg_dropout=c.cfg_dropout,
                                 repeat_prob=c.repeat_prob, phrase_prob=c.phrase_prob)
        return batch_stream(make, self.rng, c.workers, f"distilled:{c.seed}:{self.step}")

    def encode(self, texts: list[str]) -> torch.Tensor:
        ids = self.tok(texts, padding="max_length", max_length=self.tok.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text(ids).last_hidden_state  # (B, 32, D)

    def guidance_scales(self, b: int) -> torch.Tensor:
        c = self.cfg
        g = torch.empty(b, device=self.device).uniform_(c.guidance_min, c.guidance_max)
        keep = torch.rand(b, device=self.device) < c.default_guidance_share
        return torch.where(keep, torch.full_like(g, c.default_guidance), g)  # (B,)

    @torch.no_grad()
    def teacher_two_steps(self, z_t, t, cond, uncond, g, w_embed):
        """Step 3's ``z''``: two guided DDIM steps of the teacher from ``t`` (classifier-free
        guidance, or the guidance embedding ``w_embed`` of a teacher that takes one)."""
        z, view = z_t, (-1, 1, 1, 1)
        for k in range(2):
            t_k = t - k * self.stride  # (B,)
            if takes_guidance(self.teacher_unet):
                v = self.teacher_unet(z, t_k, cond, timestep_cond=w_embed).sample
            else:
                both = self.teacher_unet(torch.cat([z, z]), torch.cat([t_k, t_k]),
                                         torch.cat([uncond, cond])).sample
                v_u, v_c = both.chunk(2)
                v = v_u + g.view(view) * (v_c - v_u)  # classifier-free guidance
            s = t_k - self.stride  # -1 past the end: alpha_bar 1
            z = ddim_step(z, v, self.abar[t_k].view(view), self.abar[s].view(view))
        return z

    def step_once(self, batch) -> float:
        dev = self.device
        images, texts = batch
        b, view = len(texts), (-1, 1, 1, 1)
        with torch.no_grad():
            z0 = self.vae.encode(to_unit(images.to(dev))).latent_dist.mean
            z0 = z0 * self.vae.config.scaling_factor  # (B, 4, 16, 16)
            if self.empty is None:
                self.empty = self.encode([""])
            cond, uncond = self.encode(texts), self.empty.expand(b, -1, -1)  # (B, 32, D) each
            t = self.grid[torch.randint(0, len(self.grid), (b,), device=dev)]  # (B,)
            z_t = self.noise.add_noise(z0, torch.randn_like(z0), t)
            g = self.guidance_scales(b)
            w_embed = self.teacher.get_guidance_scale_embedding(
                g - 1, embedding_dim=self.unet.config.time_cond_proj_dim).to(dev)  # (B, 256)
            z_s = self.teacher_two_steps(z_t, t, cond, uncond, g, w_embed)
            a_t, a_s = self.abar[t].view(view), self.abar[t - 2 * self.stride].view(view)
            target = student_target(z_t, z_s, a_t, a_s)
        pred = self.unet(z_t, t, cond, timestep_cond=w_embed).sample
        w = snr_loss_weight(self.abar[t], "v_prediction", gamma=float("inf"), floor=1.0)
        loss = (w * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        optimizer_step(self, loss, self.params)
        return loss.item()

    # -- export -----------------------------------------------------------------------------------
    def export(self, out: str | Path | None = None):
        """Step 4: the pipeline (EMA weights) as fp16 safetensors in shards under 8 MB."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        from .card_distilled import write_card

        final = Path(out or self.cfg.out)
        tmp = partial_folder(final)
        unet = copy.deepcopy(self.unet).eval()
        self.ema.copy_to(list(unet.parameters()))
        scheduler = DDIMScheduler.from_config(self.sample_scheduler.config, timestep_spacing="trailing",
                                              clip_sample=False, set_alpha_to_one=True)
        pipe = StableDiffusionPipeline(
            vae=pin_posterior_std(copy.deepcopy(self.vae)), text_encoder=copy.deepcopy(self.text),
            tokenizer=self.tok, unet=unet, scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        ).to(torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True, max_shard_size="8MB")
        fix_tokenizer_class(tmp)
        meta = {
            "step": self.step, "batch": self.cfg.batch, "samples_seen": self.step * self.cfg.batch,
            "world_spec": world.SPEC_VERSION, "student_steps": self.cfg.student_steps,
            "teacher_branches": 1 if takes_guidance(self.teacher_unet) else 2,
            "trained": "UNet (student), from the teacher's weights", **self.init_info,
            "config": asdict(self.cfg),
        }
        publish(tmp, final, meta, write_card)
        return pipe

    # -- loop -------------------------------------------------------------------------------------
    def run(self) -> None:
        run_steps(self, probe=20, refit=100)


def export_from_state(state_dir: str | Path, out: str | Path, init: str | None = None, log=print) -> Path:
    """``export.export_saved_state`` of a distillation run (``init``: its teacher)."""
    cfg = DistillConfig(state_dir=str(state_dir), out=str(out), **({"init": init} if init else {}))
    return export_saved_state(DistillTrainer(cfg, log=log), out)


def train_distilled(cfg: DistillConfig, resume: bool = False, log=print) -> DistillTrainer:
    """Entry point of ``python -m vgen train distilled``."""
    return train_from(DistillTrainer(cfg, log=log), resume, "the teacher")
