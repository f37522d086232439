"""Feature views: PCA-to-RGB and strongest channels, the generator's UNet/VAE features (tiny
random pipeline), and VGG16 with random weights in timm's layout, loaded through vgen.hub."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vgen import backbones, pipelines
from vgen.backbones import BackboneUnavailableError, VGG16_STAGES
from vgen.errors import InvalidRequestError
from vgen.features import extract, unet_features, vae_features, vgg16_features
from vgen.features import channel_grid, pca_rgb, strongest_channels

TIMM_CONFIG = {
    "architecture": "vgg16",
    "num_classes": 1000,
    "pretrained_cfg": {"tag": "tv_in1k", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "classifier": "head.fc"},
}


def _image(size=(64, 64)) -> Image.Image:
    im = Image.new("RGB", size, (240, 240, 240))
    im.paste((220, 40, 40), (8, 8, 30, 30))
    im.paste((45, 75, 215), (36, 30, 58, 52))
    return im


def _timm_vgg16_files(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random VGG16 weights named as timm's ``vgg16.tv_in1k`` names them (fp16 to stay small),
    with a stand-in for timm's head, which must be ignored."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(seed)
    trunk = make_layers(cfgs["D"], batch_norm=False)  # the trunk of torchvision's vgg16()
    state = {f"features.{k}": v.half().contiguous() for k, v in trunk.state_dict().items()}
    state["pre_logits.fc2.weight"] = torch.zeros(8, 8, 1, 1, dtype=torch.float16)
    state["head.fc.weight"] = torch.zeros(10, 8, dtype=torch.float16)
    return state


@pytest.fixture(scope="module")
def vgg_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vgg-root") / "vgg16.tv_in1k"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TIMM_CONFIG))
    save_file(_timm_vgg16_files(), str(folder / "model.safetensors"))
    return folder


@pytest.fixture
def vgg_env(vgg_folder, monkeypatch):
    roots = [os.environ.get("VGEN_MODEL_ROOTS", ""), str(vgg_folder.parent)]
    monkeypatch.setenv("VGEN_MODEL_ROOTS", os.pathsep.join(r for r in roots if r))
    backbones.clear_cache()
    yield vgg_folder
    backbones.clear_cache()


# ---- views ---------------------------------------------------------------------------------------

def test_pca_rgb_puts_the_main_directions_in_the_colors():
    h = w = 8
    f = torch.zeros(6, h, w)
    f[0, :, :4] = 5.0  # the strongest direction: left vs right
    f[1, :4, :] = 2.0  # second: top vs bottom
    f[2:] = 0.01 * torch.randn(4, h, w, generator=torch.Generator().manual_seed(0))
    im = pca_rgb(f, (32, 32))
    assert im.mode == "RGB" and im.size == (32, 32)
    a = np.asarray(pca_rgb(f)).astype(int)
    red = a[..., 0]
    assert abs(red[:, :4].mean() - red[:, 4:].mean()) > 200  # component 1 splits left/right
    green = a[..., 1]
    assert abs(green[:4].mean() - green[4:].mean()) > 200
    assert np.array_equal(np.asarray(pca_rgb(f)), np.asarray(pca_rgb(f.clone())))  # deterministic


def test_strongest_channels_grid():
    f = torch.zeros(10, 6, 6)
    f[7] = 3.0
    f[2] = -2.0
    f[5, 0, 0] = 1.0
    assert strongest_channels(f, 3) == [7, 2, 5]
    g = channel_grid(f, k=4, cell_size=32, columns=2)
    assert g.mode == "RGB" and g.width >= 64 and g.height >= 64


# ---- the generator -------------------------------------------------------------------------------

def _no_hooks(module) -> bool:
    return all(not m._forward_hooks for m in module.modules())


def test_unet_and_vae_features_of_the_generator(tiny_env, tmp_path):
    fm = unet_features(_image(), timestep=100)
    assert list(fm.layers) == ["down.0", "down.1", "mid", "up.0", "up.1"]
    assert all(t.ndim == 3 and t.dtype == torch.float32 for t in fm.layers.values())
    assert fm.layers["up.1"].shape[1:] == (32, 32)
    again = unet_features(_image(), timestep=100)
    assert torch.equal(fm.layers["mid"], again.layers["mid"])  # seeded noise
    views = fm.views(k=4)
    assert views["mid"]["pca"].size == (64, 64) and views["mid"]["channels"].mode == "RGB"
    ve = vae_features(_image())
    assert list(ve.layers) == ["down.0", "down.1", "mid"]
    pipe = pipelines.model_cache().get(None).pipe
    assert _no_hooks(pipe.unet) and _no_hooks(pipe.vae)
    written = ve.save(tmp_path / "vae")
    assert (tmp_path / "vae" / "pca.png").exists() and len(written) == 2 + 2 * 3
    with pytest.raises(InvalidRequestError, match="timestep"):
        unet_features(_image(), timestep=5000)


def test_unet_features_of_edit_models_and_hooks_removed_on_error(tiny_env, tiny_models, monkeypatch):
    for kind in ("inpaint", "instruct"):
        assert "mid" in unet_features(_image(), model=str(tiny_models[kind])).layers
    pipe = pipelines.model_cache().get(None).pipe

    def broken(*a, **k):
        raise RuntimeError("text encoder failed")

    monkeypatch.setattr(type(pipe.text_encoder), "forward", broken)
    with pytest.raises(RuntimeError, match="text encoder failed"):
        unet_features(_image())
    assert _no_hooks(pipe.unet) and _no_hooks(pipe.vae)


# ---- VGG16 through the Hub path ---------------------------------------------------------------------

def test_vgg16_loads_timm_weights_through_hub_resolve(vgg_env, monkeypatch):
    from vgen import hub

    calls = []
    real = hub.resolve
    monkeypatch.setattr(hub, "resolve", lambda ref, **kw: calls.append(ref) or real(ref, **kw))
    fm = vgg16_features(_image(), weights=str(vgg_env), size=64)
    assert calls == [str(vgg_env)]
    assert list(fm.layers) == list(VGG16_STAGES)
    shapes = {n: tuple(t.shape) for n, t in fm.layers.items()}
    assert shapes == {"conv1_2": (64, 64, 64), "conv2_2": (128, 32, 32), "conv3_3": (256, 16, 16),
                      "conv4_3": (512, 8, 8), "conv5_3": (512, 4, 4)}
    assert all((t >= 0).all() for t in fm.layers.values())  # after ReLU
    # the weights are the file's features.* tensors
    bb = backbones.load_vgg16(str(vgg_env))
    saved = _timm_vgg16_files()
    assert torch.equal(bb.features[0].weight, saved["features.0.weight"].float())
    assert torch.equal(bb.features[28].bias, saved["features.28.bias"].float())
    assert fm.pca("conv3_3").size == (64, 64)
    assert fm.channels("conv5_3", k=8).mode == "RGB"
    # the default reference comes from VGEN_VGG16_WEIGHTS
    monkeypatch.setenv("VGEN_VGG16_WEIGHTS", str(vgg_env))
    assert list(extract(_image(), "vgg16", size=32).layers) == list(VGG16_STAGES)


def test_vgg16_through_the_local_hub(local_hub, local_hub_env, vgg_folder):
    """The default id, served over HTTP by the local Hub (as huggingface.co would serve it)."""
    backbones.clear_cache()
    local_hub.add_repo(backbones.VGG16_WEIGHTS, from_dir=vgg_folder)
    try:
        fm = vgg16_features(_image(), size=32)
    finally:
        backbones.clear_cache()
    assert fm.layers["conv5_3"].shape == (512, 2, 2) and fm.source == backbones.VGG16_WEIGHTS
    assert len(fm.extras["revision"]) == 40


def test_vgg16_unavailable_offline_says_so_and_generator_views_keep_working(tiny_env, tmp_path, monkeypatch):
    from huggingface_hub import constants

    backbones.clear_cache()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("VGEN_VGG16_WEIGHTS", raising=False)
    with pytest.raises(BackboneUnavailableError, match=r"timm/vgg16\.tv_in1k\) could not be fetched") as e:
        vgg16_features(_image())
    assert "offline" in str(e.value) and "unet or vae" in str(e.value)
    assert "mid" in unet_features(_image()).layers and "mid" in vae_features(_image()).layers


def test_weights_that_are_not_vgg16_are_refused(tmp_path, monkeypatch):
    folder = tmp_path / "not-vgg"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_file({"features.0.weight": torch.zeros(8, 3, 3, 3)}, str(folder / "model.safetensors"))
    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(tmp_path))
    backbones.clear_cache()
    with pytest.raises(BackboneUnavailableError, match="does not hold VGG16 weights"):
        backbones.load_vgg16(str(folder))


# ---- CLI -----------------------------------------------------------------------------------------

def test_cli_features_writes_views(tiny_env, vgg_env, tmp_path, capsys):
    from vgen.cli import main

    src = tmp_path / "in.png"
    _image().save(src)
    assert main(["features", str(src), "--backbone", "vgg16", "--weights", str(vgg_env), "--size", "32",
                 "--top", "4", "--out", str(tmp_path / "vgg")]) == 0
    names = {p.name for p in (tmp_path / "vgg").iterdir()}
    assert {"input.png", "pca.png", "00-conv1_2-pca.png", "04-conv5_3-channels.png"} <= names
    assert main(["features", str(src), "--backbone", "unet", "--out", str(tmp_path / "unet")]) == 0
    assert (tmp_path / "unet" / "02-mid-pca.png").exists()
    assert "conv5_3" in capsys.readouterr().out
