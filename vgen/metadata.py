"""Generation parameters in PNG files, laid out as AUTOMATIC1111 writes them.

The ``parameters`` text chunk is::

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 4.0, Seed: 3, Size: 64x64, Model: REF, ...

with vgen's own fields appended to the last line (model revision, task, strength, image
guidance, decoder, precision, vgen version). Values holding commas or quotes are JSON-quoted, as A1111
does. ``parse_parameters`` reads it back; ``request_from_parameters`` rebuilds a request.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from . import __version__
from .errors import InvalidImageError
from .layout import Layout
from .requests import EditRequest, Expansion, GenerateRequest, LayoutPlan
from .schedulers import key_for_sampler

KEY = "parameters"
# A1111's own pattern for "Key: value" pairs, values optionally JSON-quoted.
_PAIR = re.compile(r'\s*([\w ./-]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: Any) -> str:
    text = str(value)
    if any(c in text for c in ',"\n:'):
        return json.dumps(text)
    return text


def format_parameters(req: GenerateRequest, seed: int, sampler: str, model: str,
                      revision: str, extra: dict[str, Any] | None = None) -> str:
    """The ``parameters`` text of one image made by ``req`` with ``seed``."""
    lines = [req.prompt.replace("\n", " ")]
    if req.negative_prompt:
        lines.append("Negative prompt: " + req.negative_prompt.replace("\n", " "))
    pairs: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": sampler,
        "CFG scale": req.guidance,
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model": model,
        "Model revision": revision,
        "Task": req.task,
    }
    if isinstance(req, EditRequest):
        if req.mode in ("img2img", "inpaint"):
            pairs["Denoising strength"] = req.strength
        if req.mode == "instruct":
            pairs["Image CFG scale"] = req.image_guidance
    pairs["Decoder"] = req.decoder
    pairs.update(expansion_fields(req.expansion))
    pairs.update(layout_fields(req))
    pairs.update(extra or {})
    pairs["vgen version"] = __version__
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs.items() if v is not None))
    return "\n".join(lines)


# How a language model wrote the prompt (vgen.expand): PNG field -> Expansion attribute.
EXPANSION_FIELDS = {
    "Original prompt": "original_prompt",
    "Expanded prompt": "expanded_prompt",
    "Expansion LM": "lm",
    "Expansion LM revision": "revision",
    "Expansion seed": "seed",
    "Expansion temperature": "temperature",
    "Expansion system prompt": "system_prompt",
}


def expansion_fields(expansion: Expansion | None) -> dict[str, Any]:
    """The PNG fields recording ``expansion`` (none without one; newlines are JSON-escaped)."""
    if expansion is None:
        return {}
    return {k: getattr(expansion, a) for k, a in EXPANSION_FIELDS.items()
            if getattr(expansion, a) not in (None, "")}


def expansion_from_parameters(p: dict[str, Any]) -> Expansion | None:
    """The Expansion recorded in parsed parameters; None for images made without one."""
    if "Expansion LM" not in p:
        return None
    kw = {a: p[k] for k, a in EXPANSION_FIELDS.items() if k in p}
    kw.setdefault("original_prompt", "")
    kw.setdefault("expanded_prompt", p.get("prompt", ""))
    if "seed" in kw:
        kw["seed"] = int(kw["seed"])
    if "temperature" in kw:
        kw["temperature"] = float(kw["temperature"])
    return Expansion(**kw)


# How the layout was planned (vgen.plan): PNG field -> LayoutPlan attribute.
LAYOUT_PLAN_FIELDS = {"Layout planner": "planner", "Layout planner revision": "revision",
                      "Layout seed": "seed", "Layout temperature": "temperature"}


def layout_fields(req: GenerateRequest) -> dict[str, Any]:
    """The PNG fields recording the request's layout: ``Layout`` (its JSON, quoted as A1111
    quotes values with commas), the layout guidance, and the planner that wrote it."""
    if req.layout is None:
        return {}
    out: dict[str, Any] = {"Layout": req.layout.to_json(), "Layout guidance": req.layout_guidance}
    if req.layout_plan is not None:
        out.update({k: getattr(req.layout_plan, a) for k, a in LAYOUT_PLAN_FIELDS.items()
                    if getattr(req.layout_plan, a) not in (None, "")})
    return out


def layout_from_parameters(p: dict[str, Any]) -> dict[str, Any]:
    """``layout``, ``layout_guidance`` and ``layout_plan`` of a request, from parsed parameters
    ({} for an image made without a layout; a damaged layout is an InvalidLayoutError)."""
    if "Layout" not in p:
        return {}
    out: dict[str, Any] = {"layout": Layout.from_json(p["Layout"])}
    if "Layout guidance" in p:
        out["layout_guidance"] = float(p["Layout guidance"])
    if "Layout planner" in p:
        kw = {a: p[k] for k, a in LAYOUT_PLAN_FIELDS.items() if k in p}
        if "seed" in kw:
            kw["seed"] = int(kw["seed"])
        if "temperature" in kw:
            kw["temperature"] = float(kw["temperature"])
        out["layout_plan"] = LayoutPlan(**kw)
    return out


def parse_parameters(text: str) -> dict[str, Any]:
    """Split a ``parameters`` text into ``prompt``, ``negative_prompt`` and the key/value pairs
    of its last line (strings, JSON-unquoted)."""
    lines = text.strip().split("\n")
    last = lines[-1] if len(lines) > 1 or "Steps:" in lines[-1] else ""
    body = lines[:-1] if last else lines
    prompt, negative = [], []
    for line in body:
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:"):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for key, value in _PAIR.findall(last):
        value = value.strip()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key.strip()] = value
    return out


def request_from_parameters(text: str) -> GenerateRequest:
    """Rebuild the request that made an image from its ``parameters`` text."""
    p = parse_parameters(text)
    width, height = (int(v) for v in p.get("Size", "0x0").split("x"))
    kwargs = dict(
        prompt=p["prompt"],
        negative_prompt=p["negative_prompt"],
        model=p.get("Model"),
        steps=int(p["Steps"]) if "Steps" in p else None,
        guidance=float(p["CFG scale"]) if "CFG scale" in p else None,
        seed=int(p["Seed"]) if "Seed" in p else None,
        width=width or None,
        height=height or None,
        scheduler=key_for_sampler(p.get("Sampler", "")),
        decoder=p.get("Decoder", "full"),
        expansion=expansion_from_parameters(p),
    )
    task = p.get("Task", "txt2img")
    if task == "txt2img":
        return GenerateRequest(**kwargs, **layout_from_parameters(p))
    edit = EditRequest(**kwargs, mode=task)
    if "Denoising strength" in p:
        edit = replace(edit, strength=float(p["Denoising strength"]))
    if "Image CFG scale" in p:
        edit = replace(edit, image_guidance=float(p["Image CFG scale"]))
    return edit


def attach(image: Image.Image, parameters: str) -> Image.Image:
    """Record ``parameters`` on an in-memory image; ``save_png``/``png_bytes`` write it out."""
    image.info[KEY] = parameters
    return image


def _pnginfo(image: Image.Image) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for k, v in image.info.items():
        if isinstance(v, str):
            info.add_itxt(k, v) if not v.isascii() else info.add_text(k, v)
    return info


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=_pnginfo(image))
    return path


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=_pnginfo(image))
    return buf.getvalue()


def read_parameters(source: str | Path | Image.Image) -> str:
    """The ``parameters`` text of a PNG file or image; InvalidImageError when it has none."""
    image = source if isinstance(source, Image.Image) else Image.open(source)
    text = image.info.get(KEY)
    if not text:
        raise InvalidImageError(
            "this image carries no generation parameters (only PNGs saved by vgen or "
            "AUTOMATIC1111 have a 'parameters' text chunk)"
        )
    return text
