"""Layouts from an instruction language model with a chat template (e.g.
``Qwen/Qwen2.5-0.5B-Instruct`` from the Hub), in LLM-grounded Diffusion's in-context format
(LMD, Lian et al. 2023, "LLM-grounded Diffusion: Enhancing Prompt Understanding of Text-to-Image
Diffusion Models with Large Language Models", its layout-generation prompt and examples).

The model is asked, as one user turn through its own chat template, for the caption's objects as
``Objects: [('a green car', [x, y, width, height]), ...]`` on a 512×512 canvas, origin top-left,
and a ``Background prompt: ...`` line. :func:`parse_lmd_text` reads that answer into a
:class:`vgen.layout.Layout` (boxes converted to ``[x0, y0, x1, y1]`` in 0..1 and clipped to the
canvas) or raises :class:`~vgen.errors.PlanParseError` showing the raw text.

Sampling is reproducible: each variant runs ``generate`` under ``torch.random.fork_rng`` seeded
with its seed (the process's own random state is restored afterwards), greedy at temperature 0.
"""

from __future__ import annotations

import ast
import re
import threading

from .errors import InvalidRequestError, PlanParseError
from .layout import MAX_OBJECTS, Layout, LayoutObject

CANVAS = 512  # LMD's canvas, in the prompt and its examples
MAX_NEW_TOKENS = 384  # 30 objects of ~12 tokens, and the background line

# LMD's layout prompt (its "v0.1" template), with its in-context examples.
INSTRUCTIONS = (
    "You are an intelligent bounding box generator. I will provide you with a caption for a "
    "photo, image, or painting. Your task is to generate the bounding boxes for the objects "
    "mentioned in the caption, along with a background prompt describing the scene. The images "
    f"are of size {CANVAS}x{CANVAS}. The top-left corner has coordinate [0, 0]. The bottom-right "
    f"corner has coordinate [{CANVAS}, {CANVAS}]. The bounding boxes should not overlap or go "
    "beyond the image boundaries. Each bounding box should be in the format of (object name, "
    "[top-left x coordinate, top-left y coordinate, box width, box height]) and should not "
    "include more than one object. Do not put objects that are already provided in the bounding "
    "boxes into the background prompt. Do not include non-existing or excluded objects in the "
    "background prompt. Use \"A realistic scene\" as the background prompt if no background is "
    "given in the prompt. If needed, you can make reasonable guesses. Please refer to the "
    "examples below for the desired format.")
EXAMPLES = (
    ("A realistic image of landscape scene depicting a green car parking on the left of a blue "
     "truck, with a red air balloon and a bird in the sky",
     "Objects: [('a green car', [21, 281, 211, 159]), ('a blue truck', [269, 283, 209, 160]), "
     "('a red air balloon', [66, 8, 145, 135]), ('a bird', [296, 42, 143, 100])]\n"
     "Background prompt: A realistic landscape scene"),
    ("A realistic top-down view of a wooden table with two apples on it",
     "Objects: [('a wooden table', [20, 148, 472, 216]), ('an apple', [150, 226, 100, 100]), "
     "('an apple', [280, 226, 100, 100])]\nBackground prompt: A realistic top-down view"),
    ("A realistic scene of three skiers standing in a line on the snow near a palm tree",
     "Objects: [('a skier', [5, 152, 139, 168]), ('a skier', [278, 192, 121, 158]), "
     "('a skier', [148, 173, 124, 155]), ('a palm tree', [404, 105, 103, 251])]\n"
     "Background prompt: A realistic outdoor scene with snow"),
)


def lmd_messages(prompt: str) -> list[dict]:
    """The chat turn that asks for ``prompt``'s layout: instructions, examples, the caption."""
    shots = "\n\n".join(f"Caption: {c}\n{a}" for c, a in EXAMPLES)
    text = f"{INSTRUCTIONS}\n\n{shots}\n\nCaption: {prompt.strip()}\nObjects:"
    return [{"role": "user", "content": text}]


_OBJECTS = re.compile(r"Objects:\s*(\[.*?\])\s*(?:\n|$)", re.S)
_BACKGROUND = re.compile(r"Background prompt:\s*(.*)")


def parse_lmd_text(text: str) -> Layout:
    """An answer in LMD's format as a Layout. A bare list (the answer continuing the prompt's
    ``Objects:``) is read too."""
    raw = text
    body = text.strip()
    if body.startswith("["):
        body = "Objects: " + body
    m = _OBJECTS.search(body)
    if not m:
        raise PlanParseError("the planner's answer has no 'Objects: [(phrase, [x, y, w, h]), ...]' "
                             f"list; raw output: {raw!r}", raw)
    try:
        items = ast.literal_eval(m.group(1))
        objects = [_lmd_object(item) for item in items]
    except InvalidRequestError as e:  # before ValueError: the layout errors are ValueErrors too
        raise PlanParseError(f"the planner wrote a bad object ({e}); raw output: {raw!r}", raw) from None
    except (ValueError, SyntaxError, TypeError) as e:
        raise PlanParseError(f"the planner's objects do not parse ({e}); raw output: {raw!r}", raw) from None
    if not objects or len(objects) > MAX_OBJECTS:
        raise PlanParseError(f"the planner wrote {len(objects)} objects; a layout has 1 to "
                             f"{MAX_OBJECTS}; raw output: {raw!r}", raw)
    bg = _BACKGROUND.search(body[m.end():] or "")
    background = bg.group(1).strip() if bg else ""
    return Layout(tuple(objects), background=background)


def _lmd_object(item) -> LayoutObject:
    """``(phrase, [x, y, w, h])`` in canvas pixels -> a LayoutObject, clipped to the canvas."""
    phrase, (x, y, w, h) = item
    if not isinstance(phrase, str):
        raise TypeError("a phrase must be text")
    x0, y0 = min(max(float(x), 0.0), CANVAS), min(max(float(y), 0.0), CANVAS)
    x1, y1 = min(max(float(x) + float(w), 0.0), CANVAS), min(max(float(y) + float(h), 0.0), CANVAS)
    return LayoutObject(" ".join(phrase.split()), tuple(round(v / CANVAS, 4) for v in (x0, y0, x1, y1)))


def is_chat_tokenizer(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


_GENERATE_LOCK = threading.Lock()  # fork_rng and generate: one sampling at a time


def sample_chat(model, tok, prompt: str, seed: int, temperature: float) -> str:
    """One answer to :func:`lmd_messages` (the new tokens only, decoded)."""
    import torch

    ids = tok.apply_chat_template(lmd_messages(prompt), add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    sampling = {"do_sample": True, "temperature": float(temperature), "top_k": 0} if temperature > 0 \
        else {"do_sample": False}
    with _GENERATE_LOCK, torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tok.pad_token_id
                             if tok.pad_token_id is not None else tok.eos_token_id, **sampling)
    new = out[0, ids["input_ids"].shape[1]:]  # (new tokens,)
    return tok.decode(new, skip_special_tokens=True)
