"""The models ``python -m vgen bench`` times (``vgen.bench``): the published architectures with
random weights (``vgen.archs``; speed does not depend on the weights), a tiny SD-shaped pipeline,
and the TAESD stand-in (``AutoencoderTiny`` at TAESD's architecture) for ``vgen-fast``, each saved
in Hub layout so the engine loads them as it loads any model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from .catalog import EMBEDDED_DISTILLED_MODEL, EMBEDDED_MODEL

EMBEDDED = (EMBEDDED_MODEL, EMBEDDED_DISTILLED_MODEL)  # the project's own models: no build


def save_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """A tiny Stable-Diffusion-shaped text-to-image pipeline (64x64) whose VAE has SD's latent
    space by config (4 levels, 4 latent channels, scaling factor 0.18215), so the tiny
    autoencoder applies to it; random weights, Hub layout."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .archs import stand_in_tokenizer
    from .shapes.train import fix_tokenizer_class

    torch.manual_seed(seed)
    tok = stand_in_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.18215)
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                             beta_end=0.012, timestep_spacing="trailing")
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    fix_tokenizer_class(Path(folder))
    return Path(folder)


def save_tiny_autoencoder(folder: Path, tiny: bool = False, seed: int = 0) -> Path:
    """An ``AutoencoderTiny`` with random weights in Hub layout: TAESD's published architecture
    (diffusers' defaults are TAESD's config.json), or with ``tiny`` a 8-channel one for tests."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    kw = dict(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
              num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4) if tiny else {}
    AutoencoderTiny(**kw).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def model_folder(case, root: Path, log: Callable[[str], None]) -> str:
    """The model reference of ``case`` (a ``vgen.bench.Case``), building (or reusing) its folder
    under ``root``."""
    if case.key in EMBEDDED:
        return case.key
    folder = root / case.key
    if not (folder / "model_index.json").is_file():
        t0 = time.perf_counter()
        from .archs import save_arch

        if case.key == "tiny-sd":
            save_tiny_sd(folder)
        elif case.key.startswith("tiny-"):
            save_arch(case.key.removeprefix("tiny-"), folder, tiny=True)
        else:
            save_arch(case.key, folder)
        log(f"built {case.model} with random weights in {time.perf_counter() - t0:.0f} s")
    return str(folder)

