"""Tiny random pipelines built from configs (as diffusers' own tests build theirs), saved in
Hub layout so they load through the same reference-resolving code as real models."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)

from vgen.shapes.model import ModelConfig, build_sample_scheduler, build_text_encoder, build_unet, build_vae
from vgen.shapes.tokenizer import build_tokenizer
from vgen.shapes.train import fix_tokenizer_class

PIPELINES = {
    "txt2img": (StableDiffusionPipeline, 4),
    "inpaint": (StableDiffusionInpaintPipeline, 9),
    "instruct": (StableDiffusionInstructPix2PixPipeline, 8),
}


def build_tiny(kind: str = "txt2img", seed: int = 0):
    """A tiny 64x64 pipeline of ``kind`` with random weights (fixed by ``seed``)."""
    cls, in_channels = PIPELINES[kind]
    cfg = ModelConfig.tiny()
    torch.manual_seed(seed)
    tok = build_tokenizer()
    text = build_text_encoder(cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    unet = build_unet(cfg)
    if in_channels != 4:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(unet.config, in_channels=in_channels)
    kwargs = dict(vae=build_vae(cfg), text_encoder=text, tokenizer=tok, unet=unet,
                  scheduler=build_sample_scheduler(cfg), safety_checker=None, feature_extractor=None,
                  requires_safety_checker=False)
    return cls(**kwargs)


def save_tiny(folder: Path, kind: str = "txt2img", seed: int = 0) -> Path:
    pipe = build_tiny(kind, seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    fix_tokenizer_class(Path(folder))
    return Path(folder)


def check_interrupted_run(trainer_cls, train, export_from_state, cfg, monkeypatch) -> None:
    """A pipeline trainer's runs/ -> checkpoints/ discipline (a 3-step ``cfg``): a run killed at
    its second step leaves its state and no model folder; ``resume`` goes on from step 1 to the
    end and exports; ``export_from_state(state_dir, out)`` exports a run's state elsewhere."""
    import json

    import pytest

    real = trainer_cls.step_once
    calls = {"n": 0}

    def crash_on_second(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(self, batch)

    monkeypatch.setattr(trainer_cls, "step_once", crash_on_second)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, log=lambda m: None)
    assert not Path(cfg.out).exists()  # never half a model
    assert (Path(cfg.state_dir) / "state.pt").exists()
    monkeypatch.setattr(trainer_cls, "step_once", real)
    logs: list[str] = []
    trainer = train(cfg, resume=True, log=logs.append)
    assert any("resumed" in m and "step 1" in m for m in logs)
    assert trainer.step == 3 and json.loads((Path(cfg.out) / "training.json").read_text())["step"] == 3
    other = export_from_state(cfg.state_dir, Path(cfg.state_dir).parent / "midway")
    assert json.loads((other / "training.json").read_text())["step"] == 3
