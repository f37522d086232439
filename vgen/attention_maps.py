"""Cross-attention maps as a job returns them, and their rendering: torch-free.

:class:`AttentionMaps` holds the per-token sums that ``vgen.attention.AttentionCapture``
recorded (DAAM: Tang et al. 2022, "What the DAAM: Interpreting Stable Diffusion Using Cross
Attention") as numpy arrays and renders them on demand: pick steps, resolutions and block
kinds, upsample every resolution to the image size (bilinear, as ``torch.nn.functional.
interpolate(mode="bilinear", align_corners=False)``, in numpy), sum (DAAM's aggregation over
heads, layers and steps) and min-max normalise each token's map to [0, 1]. It also draws
overlays and small-multiples grids and turns a map into an inpainting mask.

:class:`Inspection` is what ``vgen.attention.inspect_generation`` returns. Both come back
pickled from the engine's worker process, and the web server, which never imports torch,
unpickles and renders them: this module imports only numpy, Pillow and torch-free vgen modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from . import viz
from .errors import InvalidRequestError
from .requests import GenerationResult

KINDS = ("down", "mid", "up")
NORMALIZE = ("tokens", "none")
START, END, PADDING = "<start>", "<end>", "<padding>"
DEFAULT_THRESHOLD = 0.5


# ---- prompt tokens ------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptTokens:
    """How the text encoder sees a prompt: its tokens (display strings, ``</w>`` stripped) at
    their positions in the encoder's sequence, the start/end token positions and the padding."""

    tokens: tuple[str, ...]
    positions: tuple[int, ...]
    words: tuple[int, ...]  # word index of each token (BPE pieces of one word share it)
    start: int | None
    end: int | None
    padding: tuple[int, ...]
    length: int

    def keys(self, include_special: bool = False) -> list[str]:
        """``"<i>:<token>"``, ``i`` counting prompt tokens from 0 (the start token excluded).
        Special keys: ``"-1:<start>"``, ``"<n>:<end>"``, ``"<n+1>:<padding>"`` (all padding
        positions summed), present when the tokenizer has them."""
        keys = [f"{i}:{t}" for i, t in enumerate(self.tokens)]
        if include_special:
            n = len(self.tokens)
            special = []
            if self.start is not None:
                special.append(f"-1:{START}")
            keys = special + keys
            if self.end is not None:
                keys.append(f"{n}:{END}")
            if self.padding:
                keys.append(f"{n + 1}:{PADDING}")
        return keys


# ---- maps ---------------------------------------------------------------------------------

def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of PyTorch's bilinear resampling along one axis with
    ``align_corners=False`` (ATen's ``area_pixel_compute_source_index``: ``src = (dst + 0.5) *
    in / out - 0.5``, clamped at 0; the right neighbour clamped at the edge)."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def upsample_bilinear(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, K) -> (height, width, K), bilinear as ``F.interpolate(mode="bilinear",
    align_corners=False)`` computes it (equal up to float rounding)."""
    h, w = values.shape[:2]
    c0, c1, cx = _bilinear_taps(w, width)
    cx = cx[None, :, None]
    cols = values[:, c0] * (1 - cx) + values[:, c1] * cx  # (h, width, K)
    r0, r1, ry = _bilinear_taps(h, height)
    ry = ry[:, None, None]
    return cols[r0] * (1 - ry) + cols[r1] * ry


def parse_resolutions(resolutions) -> set | None:
    """Latent map sizes as asked (``16``, ``"8x8"``, ``(8, 8)`` or a list of them) -> a set of
    ints and (h, w) pairs; None = all."""
    if resolutions is None:
        return None
    if isinstance(resolutions, (int, str)):
        resolutions = [resolutions]
    out = set()
    for r in resolutions:
        if isinstance(r, str):
            m = re.fullmatch(r"\s*(\d+)\s*(?:x\s*(\d+))?\s*", r)
            if not m:
                raise InvalidRequestError(f"resolution must look like 16 or 16x16, got {r!r}")
            out.add((int(m.group(1)), int(m.group(2) or m.group(1))))
        elif isinstance(r, (tuple, list)):
            out.add((int(r[0]), int(r[1])))
        else:
            out.add(int(r))
    return out


@dataclass
class AttentionMaps:
    """Cross-attention sums of one job, rendered on demand.

    ``sums[(step, kind, h, w)]``: (images, h, w, K) float32, the head-averaged probabilities
    summed over the layers of that kind and resolution at that step; columns are
    ``[start?] + prompt tokens + [end?] + [padding]``. ``layers`` counts the layers in each sum.

    Filters shared by every rendering method: ``step_range=(first, last)`` (0-based, inclusive;
    None = all), ``resolutions`` (latent map sizes such as ``16``, ``"8x8"`` or ``(8, 8)``;
    None = all), ``kinds`` (``down``/``mid``/``up``; None = all), ``image_index``, and
    ``normalize``:

    * ``"none"`` (default): DAAM's raw sums (Tang et al. 2023). On the embedded model of step
      17000 they localise best (``vgen.attention_eval``, n=60: pointing 0.990, IoU 0.504).
    * ``"tokens"``: at each pixel, a prompt token's attention divided by the attention on all
      the prompt's tokens (start, end and padding left out), i.e. which word owns the pixel.
      It was the default up to the step-12687 model (pointing 0.933, IoU 0.548); once the
      model read size words, "small"/"large" took a share of their object's pixels and the
      color words lost theirs (step 17000: pointing 0.856, IoU 0.354, color words 0.227).

    Either way each map is then min-max normalised to [0, 1]; special-token maps are raw sums.
    """

    tokens: PromptTokens
    sums: dict
    layers: dict
    timesteps: tuple[float, ...]
    image_size: tuple[int, int]  # (W, H)
    prompt: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # -- what there is
    @property
    def num_steps(self) -> int:
        return 1 + max(k[0] for k in self.sums)

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return sorted({(k[2], k[3]) for k in self.sums}, reverse=True)

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if any(s[1] == k for s in self.sums)]

    def keys(self, include_special: bool = False) -> list[str]:
        return self.tokens.keys(include_special)

    def word_keys(self) -> list[str]:
        """One key per word: ``"<i>:<word>"`` with ``i`` the word's first token index (for the
        shapes tokenizer, one token per word, these equal :meth:`keys`)."""
        return [k for k, _ in self._word_groups()]

    def _word_groups(self) -> list[tuple[str, list[int]]]:
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(self.tokens.words):
            groups.setdefault(w, []).append(i)
        out = []
        for idx in groups.values():
            word = "".join(self.tokens.tokens[i] for i in idx)
            out.append((f"{idx[0]}:{word}", idx))
        return out

    def _column(self, key: str) -> list[int]:
        """Columns of the sums that make up ``key`` (a token, special or word key)."""
        tk = self.tokens
        offset = 1 if tk.start is not None else 0
        n = len(tk.tokens)
        special = {f"-1:{START}": [0]} if tk.start is not None else {}
        if tk.end is not None:
            special[f"{n}:{END}"] = [offset + n]
        special[f"{n + 1}:{PADDING}"] = [offset + n + (tk.end is not None)]
        if key in special:
            return special[key]
        for i, k in enumerate(tk.keys()):
            if k == key:
                return [offset + i]
        for k, idx in self._word_groups():
            if k == key:
                return [offset + i for i in idx]
        raise InvalidRequestError(f"no attention map for {key!r}; the maps are: {', '.join(self.keys(True))}")

    # -- aggregation
    def _raw(self, step_range=None, resolutions=None, kinds=None, image_index: int = 0,
             normalize: str = "none") -> np.ndarray:
        """(K, H, W): sum over the selected steps, kinds and resolutions, each resolution
        upsampled (bilinear) to the image size before summing; prompt columns then divided by
        their total when ``normalize == "tokens"``."""
        if normalize not in NORMALIZE:
            raise InvalidRequestError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        res = parse_resolutions(resolutions)
        if kinds is not None:
            kinds = {kinds} if isinstance(kinds, str) else set(kinds)
            bad = kinds - set(KINDS)
            if bad:
                raise InvalidRequestError(f"block kinds must be among {', '.join(KINDS)}, got {sorted(bad)}")
        first, last = (0, self.num_steps - 1) if step_range is None else (int(step_range[0]), int(step_range[1]))
        key = (first, last, None if res is None else tuple(sorted(map(str, res))),
               None if kinds is None else tuple(sorted(kinds)), image_index, normalize)
        if key in self._cache:
            return self._cache[key]
        per_res: dict[tuple[int, int], np.ndarray] = {}
        for (step, kind, h, w), s in self.sums.items():
            if not first <= step <= last or (kinds is not None and kind not in kinds):
                continue
            if res is not None and (h, w) not in res and h not in res and w not in res:
                continue
            if image_index >= s.shape[0]:
                raise InvalidRequestError(f"image_index {image_index} out of range (the job made {s.shape[0]})")
            per_res[(h, w)] = per_res.get((h, w), 0) + s[image_index]
        if not per_res:
            raise InvalidRequestError(
                f"no attention recorded for steps {first}-{last}, resolutions {resolutions or 'all'}, "
                f"kinds {sorted(kinds) if kinds else 'all'}; recorded: steps 0-{self.num_steps - 1}, "
                f"resolutions {', '.join(f'{h}x{w}' for h, w in self.resolutions)}, kinds {', '.join(self.kinds)}"
            )
        width, height = self.image_size
        total = None
        for arr in per_res.values():
            up = upsample_bilinear(np.asarray(arr, dtype=np.float32), height, width).transpose(2, 0, 1)
            total = up if total is None else total + up
        if normalize == "tokens" and len(self.tokens.tokens) > 1:  # one token would own every pixel
            first_col = 1 if self.tokens.start is not None else 0
            prompt = total[first_col:first_col + len(self.tokens.tokens)]
            total = total.copy()
            total[first_col:first_col + len(self.tokens.tokens)] = prompt / np.maximum(
                prompt.sum(0, keepdims=True), np.float32(1e-12))
        self._cache[key] = total
        return total

    def maps(self, step_range=None, resolutions=None, kinds=None, include_special: bool = False,
             image_index: int = 0, by_word: bool = False, normalize: str = "none") -> dict[str, np.ndarray]:
        """``{"<i>:<token>": (H, W) float32 in [0, 1]}``, each map min-max normalised.
        ``by_word``: one map per word (BPE pieces summed) instead of one per token."""
        raw = self._raw(step_range, resolutions, kinds, image_index, normalize)
        keys = self.word_keys() if by_word else self.keys(include_special)
        if by_word and include_special:
            keys = [k for k in self.keys(True) if k.startswith("-1:")] + keys + \
                   [k for k in self.keys(True) if k.endswith((END, PADDING))]
        return {k: viz.normalise01(raw[self._column(k)].sum(0)) for k in keys}

    def map(self, key: str, **filters) -> np.ndarray:
        """One normalised (H, W) map; ``key`` may be a token, word or special key."""
        raw = self._raw(**filters)
        return viz.normalise01(raw[self._column(key)].sum(0))

    def summed(self, keys: Sequence[str], **filters) -> np.ndarray:
        """The (H, W) sum of several keys' maps before min-max normalisation (DAAM's sum over
        a phrase's words; ``vgen.layout_maps`` measures how much of it lies in a box)."""
        raw = self._raw(**filters)
        columns = sorted({c for k in keys for c in self._column(k)})
        if not columns:
            raise InvalidRequestError("summed needs at least one map key")
        return raw[columns].sum(0)

    # -- pictures
    def overlay(self, image: Image.Image, key: str, opacity: float = 0.6, **filters) -> Image.Image:
        """The map of ``key`` as a heat map over ``image``."""
        return viz.overlay(image, self.map(key, **filters), opacity)

    def grid(self, image: Image.Image, keys: Sequence[str] | None = None, opacity: float = 0.6,
             columns: int | None = None, cell_size: int = 128, include_special: bool = False,
             **filters) -> Image.Image:
        """Small multiples: the image, then one labelled overlay per word (or per given key)."""
        keys = list(keys) if keys is not None else self.word_keys()
        if include_special:
            keys = [k for k in self.keys(True) if k.startswith("-1:")] + keys + \
                   [k for k in self.keys(True) if k.endswith((END, PADDING))]
        cells = [image.convert("RGB")] + [self.overlay(image, k, opacity, **filters) for k in keys]
        labels = ["image"] + [k.split(":", 1)[1] for k in keys]
        return viz.grid(cells, labels, columns=columns, cell_size=cell_size)

    def to_mask(self, key: str, threshold: float = DEFAULT_THRESHOLD, **filters) -> Image.Image:
        """The map of ``key`` thresholded (``map >= threshold`` after normalisation) as an
        image-sized, binary (0/255) L-mode mask: white = repaint, ready for an inpaint edit."""
        if not 0.0 <= float(threshold) <= 1.0:
            raise InvalidRequestError(f"threshold must be from 0 to 1, got {threshold!r}")
        m = self.map(key, **filters) >= float(threshold)
        return Image.fromarray(np.where(m, 255, 0).astype(np.uint8), mode="L")

    def save_npz(self, path: str | Path, **filters) -> Path:
        """Write :meth:`maps` (float32 arrays keyed ``"<i>:<token>"``) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        maps = self.maps(**filters)
        with open(path, "wb") as f:
            np.savez_compressed(f, **maps)
        return path

    def info(self) -> dict:
        return {"prompt": self.prompt, "tokens": list(self.tokens.tokens), "steps": self.num_steps,
                "timesteps": list(self.timesteps), "image_size": list(self.image_size),
                "resolutions": [f"{h}x{w}" for h, w in self.resolutions], "kinds": self.kinds,
                "layers": {f"{s}:{k}:{h}x{w}": n for (s, k, h, w), n in sorted(self.layers.items())
                           if s == 0}}


@dataclass
class Inspection:
    """A job's result with what was recorded while it ran: attention maps and, if asked, the
    denoising path (``path[i]``: image ``i``'s predicted clean image after each step)."""

    result: GenerationResult
    maps: AttentionMaps | None = None
    path: list[list[Image.Image]] | None = None


def safe_name(key: str) -> str:
    """A file-name-safe form of a map key (``"3:circle"`` -> ``"03-circle"``)."""
    index, _, token = key.partition(":")
    token = re.sub(r"[^A-Za-z0-9_.-]+", "_", token).strip("_") or "tok"
    try:
        number = int(index)
    except ValueError:
        return f"{index}-{token}"
    return token if number < 0 else f"{number:02d}-{token}"


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance)."""
    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centers)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between)
    return float(edges[1:][int(np.argmax(between))])

