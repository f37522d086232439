"""The grounded shapes model's parts: a GLIGEN UNet (Li et al. 2023, "GLIGEN: Open-Set Grounded
Text-to-Image Generation") built from the text-to-image model, the world's scenes as layouts,
and the grounding inputs exactly as diffusers' ``StableDiffusionGLIGENPipeline`` makes them.

GLIGEN adds to every transformer block a gated self-attention layer over the visual tokens and
one token per grounded object (``GatedSelfAttentionDense``, the "fuser"), whose gates
(``alpha_attn``, ``alpha_dense``) start at zero, and a ``position_net``
(``GLIGENTextBoundingboxProjection``) that turns each object's phrase embedding and the
Fourier features of its box into that token. diffusers builds both from the UNet config
(``attention_type="gated"``); the pipeline encodes each phrase with the same text encoder and
takes its pooled output.
"""

from __future__ import annotations

import json
import random

import torch

from ..layout import Layout, LayoutObject
from . import world

MAX_OBJS = 30  # StableDiffusionGLIGENPipeline's max_objs: the grounding tokens per image


# ---- scenes as layouts -----------------------------------------------------------------------

def object_box(o: world.Obj) -> tuple[float, float, float, float]:
    """The object's exact bounding box in fractions of the image (GLIGEN's convention)."""
    x0, y0, x1, y1 = o.box
    s = world.IMAGE_SIZE
    return (x0 / s, y0 / s, x1 / s, y1 / s)


def _phrase(o: world.Obj, count_word: str, size_word: str | None) -> str:
    words = [size_word] if size_word else []
    words += [o.color, o.shape]
    if count_word == "a" and words[0][0] in "aeiou":
        count_word = "an"
    return " ".join([count_word] + words)


def canonical_phrase(o: world.Obj, with_size: bool = False) -> str:
    """'a red circle' ('a large red circle' with the size): what the planner writes."""
    return _phrase(o, "a", o.size if with_size else None)


def object_phrase(rng: random.Random, o: world.Obj) -> str:
    """A training phrase for one object, worded as the captions word one ('a red circle', 'one
    small red circle', 'a big ...'; the size half of the time), so the phrases a user or a
    planner writes all ground."""
    count = rng.choice(["a", "a", "one"])
    size = None
    if rng.random() < 0.5:
        size = "small" if o.size == "small" else rng.choice(["large", "big"])
    return _phrase(o, count, size)


def scene_layout(scene: world.Scene, rng: random.Random | None = None,
                 with_size: bool = False) -> Layout:
    """The layout of a scene: each object's phrase and exact box."""
    return Layout(tuple(
        LayoutObject(object_phrase(rng, o) if rng is not None else canonical_phrase(o, with_size),
                     object_box(o))
        for o in scene.objects))


def quiet_loading() -> None:
    """diffusers/transformers loading without progress bars and info logs (a training log and
    an evaluation report stay readable; StableDiffusionGLIGENPipeline's deprecation notice too)."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    for lib in (dlogging, tlogging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


# ---- the model ---------------------------------------------------------------------------------

def move_eos_last(tok, text):
    """Give the end token the last id (tokenizer and embedding rows swapped with the last word).

    ``CLIPTextModel`` pools at the *highest* token id when its config's ``eos_token_id`` is 2
    (the pre-#24773 rule of transformers, for CLIP's own vocabulary where the end token is the
    last id); the shapes tokenizer's end token has id 2 and the words come after it, so the
    pooled output of "a yellow circle" would be taken at "yellow" and lose "circle". GLIGEN's
    pipeline encodes phrases by that pooled output. With the end token moved to the last id
    the pooled output is taken at the end token under either rule, while every prompt encodes
    to exactly the same hidden states as before (the same embedding per word)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    eos = vocab[tok.eos_token]
    last_word = max(vocab, key=vocab.get)
    last = vocab[last_word]
    if eos == last:
        return tok, text
    vocab[tok.eos_token], vocab[last_word] = last, eos
    for t in data.get("added_tokens", []):
        if t["content"] == tok.eos_token:
            t["id"] = last
        elif t["content"] == last_word:
            t["id"] = eos
    post = data.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [last if i == eos else eos if i == last else i for i in spec["ids"]]
    new = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=tok.bos_token, eos_token=tok.eos_token, unk_token=tok.unk_token,
        pad_token=tok.pad_token, model_max_length=tok.model_max_length,
    )
    emb = text.get_input_embeddings().weight
    with torch.no_grad():
        emb[[eos, last]] = emb[[last, eos]].clone()
    text.config.eos_token_id = last
    for module in text.modules():  # the model caches the id (transformers 4: its text_model)
        if hasattr(module, "eos_token_id"):
            module.eos_token_id = last
    return new, text


def gated_unet(unet):
    """A GLIGEN copy of ``unet`` (``attention_type="gated"``): every weight of ``unet`` copied,
    the fusers and the position net new, the gates at zero (so it computes what ``unet`` did)."""
    from diffusers import UNet2DConditionModel

    gated = UNet2DConditionModel.from_config(unet.config, attention_type="gated")
    missing, unexpected = gated.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert all(".fuser." in k or k.startswith("position_net.") for k in missing), missing
    return gated.to(unet.dtype)


def new_parameters(unet) -> list[tuple[str, torch.nn.Parameter]]:
    """The GLIGEN layers' parameters (fusers and position net): what grounding training trains."""
    return [(n, p) for n, p in unet.named_parameters()
            if ".fuser." in n or n.startswith("position_net.")]


@torch.no_grad()
def encode_phrases(tok, text, phrases: list[str]) -> torch.Tensor:
    """Phrase embeddings (N, D) as ``StableDiffusionGLIGENPipeline`` computes them: the phrases
    tokenized together with padding, the text encoder's pooled output."""
    dev = next(text.parameters()).device
    inputs = tok(phrases, padding=True, return_tensors="pt").to(dev)
    return text(**inputs).pooler_output


def gligen_kwargs(layouts: list[Layout], phrase_embeddings, dim: int, device, dtype) -> dict:
    """The UNet's ``cross_attention_kwargs["gligen"]`` for a batch of layouts: boxes (B, 30, 4),
    phrase embeddings (B, 30, D) and masks (B, 30), zero-padded as the pipeline pads them.
    ``phrase_embeddings``: a phrase -> (D,) tensor mapping (or a callable)."""
    b = len(layouts)
    boxes = torch.zeros(b, MAX_OBJS, 4, device=device, dtype=dtype)
    emb = torch.zeros(b, MAX_OBJS, dim, device=device, dtype=dtype)
    masks = torch.zeros(b, MAX_OBJS, device=device, dtype=dtype)
    for i, lay in enumerate(layouts):
        n = min(len(lay), MAX_OBJS)
        if n == 0:
            continue
        boxes[i, :n] = torch.tensor(lay.boxes[:n], device=device, dtype=dtype)
        emb[i, :n] = torch.stack([phrase_embeddings[p] for p in lay.phrases[:n]]).to(device, dtype)
        masks[i, :n] = 1
    return {"boxes": boxes, "positive_embeddings": emb, "masks": masks}
