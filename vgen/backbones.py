"""Image backbones for the feature views: a torchvision VGG16 whose ImageNet weights come from
the Hub through :func:`vgen.hub.resolve`, like every other model vgen loads.

The default weights are ``timm/vgg16.tv_in1k`` (torchvision's ImageNet weights as a timm
safetensors file). timm builds VGG's convolutional trunk exactly as torchvision does, so its
``features.N.*`` keys load straight into ``torchvision.models.vgg16().features``; timm's
``pre_logits.*`` / ``head.*`` (the classifier) are not needed for feature maps and are never
read (``safe_open`` reads only the tensors asked for). Override with ``VGEN_VGG16_WEIGHTS``
(a Hub id or an allowed local folder holding ``config.json`` and ``model.safetensors``; plain
torchvision ``features.*`` state dicts load too).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from . import config, hub
from .errors import BackboneUnavailableError, ModelError

VGG16_WEIGHTS = "timm/vgg16.tv_in1k"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision vgg16().features: each stage's last ReLU (before its max-pool).
VGG16_STAGES = {"conv1_2": 3, "conv2_2": 8, "conv3_3": 15, "conv4_3": 22, "conv5_3": 29}


@dataclass
class Backbone:
    name: str
    features: torch.nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ref: str
    revision: str
    stages: dict[str, int]
    lock: threading.Lock


_CACHE: dict[tuple, Backbone] = {}
_CACHE_LOCK = threading.Lock()


def vgg16_weights_ref() -> str:
    return config.vgg16_weights_setting() or VGG16_WEIGHTS


def _norm_stats(folder: Path) -> tuple[tuple, tuple]:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return IMAGENET_MEAN, IMAGENET_STD
    pre = cfg.get("pretrained_cfg", cfg) if isinstance(cfg, dict) else {}
    mean, std = pre.get("mean", IMAGENET_MEAN), pre.get("std", IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _read_features(folder: Path, ref: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    files = sorted(p for p in folder.glob("*.safetensors") if p.name.startswith("model"))
    files = files or sorted(folder.glob("*.safetensors"))
    if not files:
        raise BackboneUnavailableError(f"{ref} has no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                name = key[len("model."):] if key.startswith("model.") else key
                if name.startswith("features."):
                    state[name[len("features."):]] = f.get_tensor(key).float()
    return state


def load_vgg16(reference: str | None = None, progress=None) -> Backbone:
    """torchvision's VGG16 trunk with the weights of ``reference`` (default
    :func:`vgg16_weights_ref`), resolved through :func:`vgen.hub.resolve`; loaded once per
    resolved folder. Raises :class:`BackboneUnavailableError` with what to do when the weights
    cannot be fetched (offline, Hub unreachable) or do not fit."""
    from torchvision.models import vgg16

    ref = (reference or "").strip() or vgg16_weights_ref()
    try:
        resolved = hub.resolve(ref, progress=progress)
    except ModelError as e:
        raise BackboneUnavailableError(
            f"the VGG16 ImageNet weights ({ref}) could not be fetched: {e} -- the generator's own "
            "feature views (backbone unet or vae) work offline; to use VGG16 offline, download the weights "
            "once or point VGEN_VGG16_WEIGHTS at a local folder with config.json and model.safetensors"
        ) from e
    key = (str(resolved.path), resolved.commit)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    state = _read_features(Path(resolved.path), ref)
    trunk = vgg16(weights=None).features
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BackboneUnavailableError(
            f"{ref} does not hold VGG16 weights torchvision can load (expected features.N.weight/bias "
            f"as in timm's vgg16 or torchvision's): {str(e).splitlines()[0]}"
        ) from e
    trunk.eval().requires_grad_(False)
    mean, std = _norm_stats(Path(resolved.path))
    backbone = Backbone("vgg16", trunk, mean, std, ref, resolved.commit, dict(VGG16_STAGES), threading.Lock())
    with _CACHE_LOCK:
        _CACHE.setdefault(key, backbone)
        return _CACHE[key]


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
