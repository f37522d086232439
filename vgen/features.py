"""Feature maps of an image, seen by the generator (its UNet blocks or its VAE encoder) or by an
ImageNet CNN (VGG16, :mod:`vgen.backbones`), as a PCA-to-RGB view (the first three principal
components of the channels as R, G, B) and a grid of the strongest channels.

Block outputs are taken with PyTorch forward hooks (``register_forward_hook``), removed in a
``finally``; the generator's views hold the model's lock, so they never interleave with a job
that has swapped the model's attention processors. Everything here runs offline except VGG16,
whose weights are resolved through the Hub (a clear error when they cannot be fetched).

UNet features follow the diffusion-features recipe (e.g. Tang et al. 2023, DIFT): encode the
image with the VAE, noise it to ``timestep`` with a fixed seed, run the UNet once with the
prompt's text embedding, and read the block outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import viz
from .errors import InvalidRequestError, UnsupportedModelError
from .requests import BACKBONES, FeaturesRequest

DEFAULT_TIMESTEP = 200


@dataclass
class FeatureMaps:
    """``layers[name]``: a (C, h, w) float32 CPU tensor per block/stage, in network order;
    ``image``: the input as the backbone saw it (resized)."""

    backbone: str
    layers: dict[str, torch.Tensor]
    image: Image.Image
    source: str = ""
    extras: dict = field(default_factory=dict)

    def pca(self, name: str, size: tuple[int, int] | None = None) -> Image.Image:
        """PCA-to-RGB view of one layer (``size`` = (W, H); default: the input's size)."""
        return pca_rgb(self._layer(name), size or self.image.size)

    def channels(self, name: str, k: int = 16, cell_size: int = 96, columns: int | None = None) -> Image.Image:
        """Grid of the ``k`` strongest channels (largest mean |activation|) of one layer."""
        return channel_grid(self._layer(name), k, cell_size, columns)

    def pca_grid(self, cell_size: int = 128) -> Image.Image:
        """The input and every layer's PCA view side by side, labelled with shapes."""
        cells = [self.image] + [self.pca(n) for n in self.layers]
        labels = ["input"] + [f"{n} {t.shape[0]}ch {t.shape[1]}x{t.shape[2]}" for n, t in self.layers.items()]
        return viz.grid(cells, labels, columns=len(cells), cell_size=cell_size)

    def views(self, k: int = 16) -> dict[str, dict[str, Image.Image]]:
        """``{layer: {"pca": image, "channels": image}}`` for every layer."""
        return {n: {"pca": self.pca(n), "channels": self.channels(n, k)} for n in self.layers}

    def save(self, out_dir: str | Path, k: int = 16) -> list[Path]:
        """Write ``input.png``, ``pca.png`` (all layers) and ``<layer>-pca.png`` /
        ``<layer>-channels.png`` per layer; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, im in [("input", self.image), ("pca", self.pca_grid())]:
            im.save(out / f"{name}.png")
            written.append(out / f"{name}.png")
        for i, name in enumerate(self.layers):
            stem = f"{i:02d}-{name.replace('.', '_')}"
            for kind, im in (("pca", self.pca(name)), ("channels", self.channels(name, k))):
                im.save(out / f"{stem}-{kind}.png")
                written.append(out / f"{stem}-{kind}.png")
        return written

    def _layer(self, name: str) -> torch.Tensor:
        if name not in self.layers:
            raise InvalidRequestError(f"no layer {name!r}; the layers are: {', '.join(self.layers)}")
        return self.layers[name]


def _rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise InvalidRequestError("the image must be a PIL image")
    return image.convert("RGB")


def _to_tensor(image: Image.Image) -> torch.Tensor:
    t = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return t.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0


class _Hooks:
    """Forward hooks storing each named module's output (first element of a tuple); removed on
    exit, whatever happens."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules = modules
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        for name, m in self.modules.items():
            self._handles.append(m.register_forward_hook(self._save(name)))
        return self

    def _save(self, name):
        def hook(module, args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.outputs[name] = out[0].detach().float().cpu()  # first image of the batch
        return hook

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False


# ---- the generator --------------------------------------------------------------------------

def _generator_input(image: Image.Image, model) -> tuple[Image.Image, torch.Tensor]:
    from .catalog import model_defaults
    from .requests import fit_size

    d = model_defaults(model)
    size = fit_size(image, d.width, d.height)
    im = _rgb(image).resize(size, Image.LANCZOS)
    x = _to_tensor(im)[None] * 2 - 1
    return im, x.to(device=model.device, dtype=model.dtype)


def _load(model_ref: str | None, cache):
    from .pipelines import model_cache

    model = (cache or model_cache()).get(model_ref)
    pipe = model.pipe
    if getattr(pipe, "vae", None) is None:
        raise UnsupportedModelError(f"{model.ref} has no VAE to encode an image with")
    return model


def vae_features(image: Image.Image, model: str | None = None, cache=None) -> FeatureMaps:
    """Outputs of each down block and the mid block of the VAE encoder."""
    m = _load(model, cache)
    enc = m.pipe.vae.encoder
    modules = {f"down.{i}": b for i, b in enumerate(enc.down_blocks)}
    if getattr(enc, "mid_block", None) is not None:
        modules["mid"] = enc.mid_block
    with m.hold():
        im, x = _generator_input(image, m)
        with _Hooks(modules) as hooks, torch.inference_mode():
            m.pipe.vae.encode(x)
    return FeatureMaps("vae", hooks.outputs, im, m.ref)


def unet_features(image: Image.Image, model: str | None = None, prompt: str = "",
                  timestep: int = DEFAULT_TIMESTEP, seed: int = 0, cache=None) -> FeatureMaps:
    """Outputs of each UNet down block, the mid block and each up block, for ``image`` encoded
    by the VAE and noised to ``timestep`` (0 = clean, up to 999) with noise from ``seed``."""
    from .denoising import alpha_bar

    m = _load(model, cache)
    pipe = m.pipe
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise UnsupportedModelError(f"{m.ref} has no UNet; pick the vae backbone or a Stable Diffusion model")
    if getattr(unet.config, "addition_embed_type", None) or getattr(pipe, "tokenizer", None) is None:
        raise UnsupportedModelError(f"UNet features support Stable Diffusion 1.x/2.x-style UNets; {m.ref} is not one")
    n_train = int(getattr(pipe.scheduler.config, "num_train_timesteps", 1000))
    if not isinstance(timestep, int) or isinstance(timestep, bool) or not 0 <= timestep < n_train:
        raise InvalidRequestError(f"timestep must be an integer from 0 to {n_train - 1}, got {timestep!r}")
    modules = {f"down.{i}": b for i, b in enumerate(unet.down_blocks)}
    if getattr(unet, "mid_block", None) is not None:
        modules["mid"] = unet.mid_block
    modules.update({f"up.{i}": b for i, b in enumerate(unet.up_blocks)})
    with m.hold():
        im, x = _generator_input(image, m)
        with _Hooks(modules) as hooks, torch.inference_mode():
            vae = pipe.vae
            latents = vae.encode(x).latent_dist.mean
            shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
            latents = (latents - shift) * float(vae.config.scaling_factor)
            g = torch.Generator("cpu").manual_seed(int(seed))
            noise = torch.randn(latents.shape, generator=g).to(latents.device, latents.dtype)
            a = alpha_bar(pipe.scheduler, timestep)
            noisy = a ** 0.5 * latents + (1 - a) ** 0.5 * noise
            extra = unet.config.in_channels - noisy.shape[1]
            if extra == latents.shape[1]:  # InstructPix2Pix: the source image's latents
                noisy = torch.cat([noisy, vae.encode(x).latent_dist.mode()], 1)
            elif extra == latents.shape[1] + 1:  # inpainting: empty mask, whole image kept
                noisy = torch.cat([noisy, torch.zeros_like(noisy[:, :1]), latents], 1)
            elif extra != 0:
                raise UnsupportedModelError(f"{m.ref}'s UNet takes {unet.config.in_channels} input channels; "
                                            "vgen cannot build its input")
            tok = pipe.tokenizer
            ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(m.device)
            text = pipe.text_encoder(ids)[0].to(m.dtype)
            guidance, extra_inputs = _guidance_input(pipe, m)
            unet(noisy, torch.tensor([timestep], device=m.device), encoder_hidden_states=text, return_dict=False,
                 **extra_inputs)
    info = {"timestep": timestep, "prompt": prompt, "seed": seed}
    if guidance is not None:
        info["guidance"] = guidance
    return FeatureMaps("unet", hooks.outputs, im, m.ref, info)


def _guidance_input(pipe, m) -> tuple[float | None, dict]:
    """A UNet that takes the guidance scale as an input (``time_cond_proj_dim``: LCM models, the
    distilled shapes model) gets the model's default scale, embedded as its pipeline embeds it;
    (None, {}) for any other."""
    dim = getattr(pipe.unet.config, "time_cond_proj_dim", None)
    if dim is None or not hasattr(pipe, "get_guidance_scale_embedding"):
        return None, {}
    from .catalog import model_defaults

    g = float(model_defaults(m).guidance)
    emb = pipe.get_guidance_scale_embedding(torch.tensor([g - 1.0]), embedding_dim=dim)  # (1, dim)
    return g, {"timestep_cond": emb.to(m.device, m.dtype)}


# ---- VGG16 ---------------------------------------------------------------------------------------

def vgg16_features(image: Image.Image, weights: str | None = None, size: int = 224,
                   progress=None) -> FeatureMaps:
    """Each VGG16 stage's output (``conv1_2`` ... ``conv5_3``, after its ReLU) for ``image``
    resized so its shorter side is ``size`` (longer side at most 2x that), normalised with the
    weights' mean/std (ImageNet's)."""
    from .backbones import load_vgg16

    if not isinstance(size, int) or not 32 <= size <= 1024:
        raise InvalidRequestError(f"size must be an integer from 32 to 1024, got {size!r}")
    bb = load_vgg16(weights, progress=progress)
    im = _rgb(image)
    s = size / min(im.size)
    w, h = (max(1, round(v * s)) for v in im.size)
    w, h = min(w, 2 * size), min(h, 2 * size)
    im = im.resize((w, h), Image.BICUBIC)
    x = _to_tensor(im)
    x = (x - torch.tensor(bb.mean)[:, None, None]) / torch.tensor(bb.std)[:, None, None]
    last = max(bb.stages.values())
    out: dict[str, torch.Tensor] = {}
    names = {i: n for n, i in bb.stages.items()}
    with bb.lock, torch.inference_mode():
        y = x[None]
        for i, layer in enumerate(bb.features):
            y = layer(y)
            if i in names:
                out[names[i]] = y[0].float().cpu().clone()
            if i >= last:
                break
    return FeatureMaps("vgg16", out, im, bb.ref, {"revision": bb.revision})


def extract_request(req: FeaturesRequest) -> FeatureMaps:
    """``extract`` with the arguments the request's backbone takes."""
    kwargs: dict = {}
    if req.backbone in ("unet", "vae"):
        kwargs["model"] = req.model
    if req.backbone == "unet":
        kwargs["prompt"] = req.prompt
    return extract(req.image, req.backbone, **kwargs)


def feature_views(req: FeaturesRequest, k: int = 16) -> list[tuple[Image.Image, str]]:
    """The Features tab's gallery for ``req``: per layer its PCA view and ``k`` strongest
    channels, captioned with the layer's shape. Rendered where the model ran, so only plain
    images cross to the web server (which never imports torch)."""
    fm = extract_request(req)
    out = []
    for name, v in fm.views(k).items():
        shape = "×".join(str(d) for d in fm.layers[name].shape)
        out += [(v["pca"], f"{name} · PCA · {shape}"), (v["channels"], f"{name} · top channels")]
    return out


def extract(image: Image.Image, backbone: str = "vgg16", **kwargs) -> FeatureMaps:
    """Feature maps of ``image`` from ``backbone`` (``vgg16``, ``unet`` or ``vae``)."""
    if backbone == "vgg16":
        return vgg16_features(image, **kwargs)
    if backbone == "unet":
        return unet_features(image, **kwargs)
    if backbone == "vae":
        return vae_features(image, **kwargs)
    raise InvalidRequestError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")


# ---- views of a feature map (torch; moved from vgen.viz, which the web server imports) --------

def pca_rgb(features: torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """The first three principal components of a (C, h, w) feature map as R, G and B.

    Exact PCA (eigenvectors of the C x C covariance, or SVD when there are fewer positions than
    channels), each component's sign fixed so its largest loading is positive (the same input
    always gives the same colors), and scaled to [0, 1] between its 1st and 99th percentile."""
    f = features.detach().float().cpu()
    if f.ndim != 3:
        raise ValueError(f"features must be (C, h, w), got shape {tuple(f.shape)}")
    c, h, w = f.shape
    x = f.reshape(c, h * w).T  # (n, C)
    x = x - x.mean(0, keepdim=True)
    k = min(3, c, h * w)
    if c <= h * w:
        evals, evecs = torch.linalg.eigh(x.T @ x / max(1, h * w - 1))
        comps = evecs[:, torch.argsort(evals, descending=True)[:k]]  # (C, k)
    else:
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        comps = vh[:k].T
    signs = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    proj = (x @ comps).numpy()  # (n, k)
    rgb = np.zeros((h * w, 3), dtype=np.float32)
    for i in range(k):
        lo, hi = np.percentile(proj[:, i], [1, 99])
        rgb[:, i] = np.clip((proj[:, i] - lo) / max(hi - lo, 1e-8), 0, 1)
    im = Image.fromarray((rgb.reshape(h, w, 3) * 255).round().astype(np.uint8))
    return im.resize(size, Image.NEAREST) if size and im.size != tuple(size) else im


def strongest_channels(features: torch.Tensor, k: int = 16) -> list[int]:
    """Indices of the ``k`` channels with the largest mean absolute activation."""
    f = features.detach().float()
    energy = f.abs().flatten(1).mean(1)
    return torch.argsort(energy, descending=True)[: min(k, f.shape[0])].tolist()


def channel_grid(features: torch.Tensor, k: int = 16, cell_size: int = 96,
                 columns: int | None = None) -> Image.Image:
    """The ``k`` strongest channels of a (C, h, w) map, each min-max scaled and colored, labelled
    with its channel index."""
    f = features.detach().float().cpu()
    idx = strongest_channels(f, k)
    cells = [viz.heat_image(viz.normalise01(f[i].numpy())) for i in idx]
    return viz.grid(cells, [f"ch {i}" for i in idx], columns=columns or min(len(idx), 8), cell_size=cell_size)
