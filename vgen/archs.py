"""The curated Hub models' published architectures, built with random weights from their configs.

The Hub is out of reach in tests and CI, so this is how the real thing's shapes, memory and
speed are checked: the same diffusers/transformers classes and the same config values as the
published repos (``unet/config.json``, ``text_encoder/config.json``, ``vae/config.json``),
random weights, a stand-in tokenizer (the real ones are Hub files; token ids only need to fit the
vocabulary). ``save_arch`` writes a pipeline in Hub layout so it loads through the engine's
normal reference path.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Shared by SD 1.x / 2.x / InstructPix2Pix (vae/config.json of those repos).
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215,
)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 projection_dim=768)
SD21_UNET = dict(SD15_UNET, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                 use_linear_projection=True)
SD21_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                 projection_dim=512)
SDXL_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_TEXT_2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                   projection_dim=1280)
SDXL_VAE = dict(SD_VAE, scaling_factor=0.13025, force_upcast=True)
# GLIGEN text-box (masterful/gligen-1-4-generation-text-box): SD 1.4's UNet with a gated
# self-attention layer per transformer block and a position net (attention_type "gated").
GLIGEN_UNET = dict(SD15_UNET, attention_type="gated")

# name: (pipeline class, unet config, text configs, vae config, scheduler, native size)
ARCHS = {
    "sd-turbo": ("StableDiffusionPipeline", SD21_UNET, (SD21_TEXT,), SD_VAE, "EulerDiscreteScheduler", 512),
    "sd15": ("StableDiffusionPipeline", SD15_UNET, (SD15_TEXT,), SD_VAE, "PNDMScheduler", 512),
    "instruct-pix2pix": ("StableDiffusionInstructPix2PixPipeline", dict(SD15_UNET, in_channels=8),
                         (SD15_TEXT,), SD_VAE, "EulerAncestralDiscreteScheduler", 512),
    "sdxl-turbo": ("StableDiffusionXLPipeline", SDXL_UNET, (SD15_TEXT, SDXL_TEXT_2), SDXL_VAE,
                   "EulerAncestralDiscreteScheduler", 512),
    "gligen": ("StableDiffusionGLIGENPipeline", GLIGEN_UNET, (SD15_TEXT,), SD_VAE, "PNDMScheduler", 512),
}
HUB_REPOS = {
    "sd-turbo": "stabilityai/sd-turbo",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "instruct-pix2pix": "timbrooks/instruct-pix2pix",
    "sdxl-turbo": "stabilityai/sdxl-turbo",
    "gligen": "masterful/gligen-1-4-generation-text-box",
}


def stand_in_tokenizer():
    """A CLIP-shaped tokenizer (max length 77) whose ids fit a 49408-token vocabulary."""
    from vgen.shapes.tokenizer import build_tokenizer

    return build_tokenizer(max_length=77)



TINY_SIZE = 64  # native size of the tiny versions (8x8 latents)


def tiny_configs(name: str) -> tuple[dict, tuple[dict, ...], dict]:
    """(unet, text encoders, vae) configs of ``name`` shrunk for tests: the same pipeline class,
    block types, levels, conditioning (two text encoders and SDXL's added time/text embeddings,
    InstructPix2Pix's 8 input channels) and latent space (latent channels, 8x down-sampling,
    scaling factor, so the TAESD decoder for that space applies), a few thousand parameters wide."""
    _, unet_cfg, text_cfgs, vae_cfg, _, _ = ARCHS[name]
    width = 16  # per text encoder; SDXL concatenates two
    texts = tuple(dict(c, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                       num_attention_heads=2, projection_dim=width) for c in text_cfgs)
    levels = len(unet_cfg["block_out_channels"])
    unet = dict(unet_cfg, sample_size=TINY_SIZE // 8, layers_per_block=1,
                block_out_channels=(16,) * levels, attention_head_dim=2, norm_num_groups=8,
                cross_attention_dim=width * len(texts))
    if "transformer_layers_per_block" in unet:
        unet["transformer_layers_per_block"] = 1
    if unet.get("addition_embed_type") == "text_time":  # 6 time ids and the pooled text embedding
        unet.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + width)
    vae = dict(vae_cfg, layers_per_block=1, norm_num_groups=8,
               block_out_channels=(8,) * len(vae_cfg["block_out_channels"]), sample_size=TINY_SIZE)
    return unet, texts, vae


def build_arch(name: str, seed: int = 0, tiny: bool = False):
    """The pipeline ``name`` at its published architecture, with random weights (``tiny``: the
    same architecture shrunk, ``tiny_configs``)."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls_name, unet_cfg, text_cfgs, vae_cfg, sched_name, _ = ARCHS[name]
    if tiny:
        unet_cfg, text_cfgs, vae_cfg = tiny_configs(name)
    torch.manual_seed(seed)
    tok = stand_in_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    texts = [CLIPTextModel(CLIPTextConfig(**text_cfgs[0], **ids))]
    if len(text_cfgs) > 1:
        texts.append(CLIPTextModelWithProjection(CLIPTextConfig(**text_cfgs[1], **ids)))
    sched_kwargs = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        num_train_timesteps=1000)
    if name.endswith("turbo"):
        sched_kwargs["timestep_spacing"] = "trailing"
    if sched_name == "PNDMScheduler":  # as in stable-diffusion-v1-5's scheduler_config.json
        sched_kwargs.update(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    parts = dict(
        vae=AutoencoderKL(**vae_cfg), unet=UNet2DConditionModel(**unet_cfg), tokenizer=tok,
        text_encoder=texts[0], scheduler=getattr(diffusers, sched_name)(**sched_kwargs),
    )
    if len(texts) > 1:
        parts.update(text_encoder_2=texts[1], tokenizer_2=tok)
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return getattr(diffusers, cls_name)(**parts)


def save_arch(name: str, folder: str | Path, tiny: bool = False) -> Path:
    from vgen.shapes.train import fix_tokenizer_class

    pipe = build_arch(name, tiny=tiny)
    pipe.save_pretrained(folder, safe_serialization=True)
    fix_tokenizer_class(Path(folder))
    if (Path(folder) / "tokenizer_2").exists():
        import json

        index = Path(folder) / "model_index.json"
        data = json.loads(index.read_text())
        data["tokenizer_2"] = ["transformers", "PreTrainedTokenizerFast"]
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(folder)


def check(name: str, root: str | Path) -> dict:
    """Save ``name`` in Hub layout under ``root`` (an allowed model root), then run it through
    the engine's normal reference path for 2 steps at its native size."""
    import shutil
    import time

    from PIL import Image

    from .edit import edit
    from .generate import generate
    from .pipelines import ModelCache
    from .requests import EditRequest, GenerateRequest

    folder = Path(root) / name
    t0 = time.perf_counter()
    save_arch(name, folder)
    built = time.perf_counter() - t0
    size = ARCHS[name][5]
    try:
        t0 = time.perf_counter()
        cache = ModelCache(max_models=1)
        if ARCHS[name][0].endswith("InstructPix2PixPipeline"):
            r = edit(EditRequest(prompt="make it blue", model=str(folder), mode="instruct", steps=2,
                                 guidance=2.0, seed=0, image=Image.new("RGB", (size, size))), cache=cache)
        else:
            r = generate(GenerateRequest(prompt="a red circle", model=str(folder), steps=2,
                                         guidance=0.0, seed=0), cache=cache)
        return {"model": HUB_REPOS[name], "size": list(r.images[0].size), "sampler": r.sampler,
                "build_s": round(built, 1), "load_and_run_s": round(time.perf_counter() - t0, 1)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":  # python -m vgen.archs [NAME ...]: check published architectures
    import json
    import os
    import sys
    import tempfile

    root = tempfile.mkdtemp(prefix="vgen-archs-")
    os.environ["VGEN_MODEL_ROOTS"] = os.pathsep.join(filter(None, [os.environ.get("VGEN_MODEL_ROOTS"), root]))
    for arch in sys.argv[1:] or list(ARCHS):
        print(json.dumps({arch: check(arch, root)}), flush=True)
