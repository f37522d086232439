"""Architecture of the embedded shapes model: a complete, small Stable Diffusion.

Every part is a stock diffusers / transformers class built from a config, so the trained model
saves with ``save_pretrained`` and loads through the same code path as any Hub model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from .tokenizer import MAX_LENGTH, build_tokenizer
from .world import IMAGE_SIZE


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the parts. ``tiny()`` is for tests; the default is the shipped model."""

    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers: int = 1
    unet_heads: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    norm_groups: int = 16
    prediction_type: str = "v_prediction"
    beta_schedule: str = "squaredcos_cap_v2"

    @classmethod
    def tiny(cls) -> "ModelConfig":
        return cls(
            text_width=32, text_layers=1, text_heads=2, unet_channels=(32, 32), unet_heads=2,
            vae_channels=(16, 16), latent_channels=4, norm_groups=8,
        )

    @property
    def latent_size(self) -> int:
        return IMAGE_SIZE // 2 ** (len(self.vae_channels) - 1)


def build_text_encoder(cfg: ModelConfig, vocab_size: int, bos: int, eos: int, pad: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_width,
            intermediate_size=cfg.text_width * 4,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            projection_dim=cfg.text_width,
        )
    )


def build_vae(cfg: ModelConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups,
        sample_size=IMAGE_SIZE,
    )


def build_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    n = len(cfg.unet_channels)
    # Cross-attention at every resolution: binding words to places is the whole task.
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.unet_layers,
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_heads,
        norm_num_groups=cfg.norm_groups,
    )


def build_train_scheduler(cfg: ModelConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
    )


def build_sample_scheduler(cfg: ModelConfig) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        steps_offset=1,
    )


def build_all(cfg: ModelConfig):
    """Fresh tokenizer, text encoder, VAE, UNet and training scheduler."""
    tok = build_tokenizer()
    text = build_text_encoder(cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    return tok, text, build_vae(cfg), build_unet(cfg), build_train_scheduler(cfg)


# The decoder is trained on the posterior mean plus this much fixed noise (train.py).
DECODER_NOISE_STD = 0.1


@torch.no_grad()
def pin_posterior_std(vae: AutoencoderKL, std: float = DECODER_NOISE_STD) -> AutoencoderKL:
    """Make the encoder's posterior N(mean, std^2): the distribution the decoder was trained on.

    The KL term is tiny, so the learned log-variance is meaningless (std near 1, as large as
    the latents themselves) and diffusers' img2img / inpaint pipelines, which *sample* the
    posterior, would start from near-noise. The log-variance half of ``quant_conv``'s output
    is set to the constant ``2 ln std``; the mean half is untouched."""
    half = vae.quant_conv.out_channels // 2
    vae.quant_conv.weight[half:].zero_()  # (C, 2C, 1, 1): rows of the log-variance channels
    vae.quant_conv.bias[half:].fill_(2 * math.log(std))
    return vae
