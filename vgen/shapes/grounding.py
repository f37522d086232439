"""Token grounding for the shapes model's training: each color and shape word of a caption
should attend to the pixels of the objects it names.

This is TokenCompose's token loss (Wang et al. 2024, "TokenCompose: Text-to-Image Diffusion with
Token-level Supervision"): for a grounded token with object mask ``M`` and its cross-attention
map ``A`` (averaged over heads), ``L = (1 - sum(A * M) / sum(A))^2``, averaged over tokens and
cross-attention layers. TokenCompose needs a segmenter for its masks; the shapes world knows
them exactly. It helps multi-object composition (the paper's finding) and makes the per-word
attention maps of the Features tab mean what they show.

The probabilities are recomputed beside each ``attn2`` layer's own processor (the capture
wrapper of ``vgen.attention``), installed through diffusers' attention-processor API for one
forward pass and restored afterwards.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import captions, world


def groundings(caption: str, scene: world.Scene) -> list[tuple[int, tuple[int, ...]]]:
    """(word index, indices of the scene's objects it names) for each color and shape word.

    Group phrases appear in the caption in the order ``parse`` returns them, each with exactly
    one color word and one shape word, so the k-th color (shape) word names the k-th group: the
    objects of that color and shape, and of that size when the phrase states one (the grammar
    only splits a color-shape group by size)."""
    if not caption:
        return []
    groups = captions.parse(caption).groups
    shapes = set(world.SHAPES) | set(captions.PLURALS.values())
    out, n_color, n_shape = [], 0, 0
    for i, w in enumerate(captions.tokenize(caption)):
        if w in world.COLORS:
            g, n_color = groups[n_color], n_color + 1
        elif w in shapes:
            g, n_shape = groups[n_shape], n_shape + 1
        else:
            continue
        objs = tuple(j for j, o in enumerate(scene.objects)
                     if (o.color, o.shape) == (g.color, g.shape) and g.size in (None, o.size))
        out.append((i, objs))
    return out


def target_masks(texts: list[str], scenes: list[world.Scene], length: int,
                 offset: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (B, length, 64, 64) of what each token position names, and which positions are
    grounded (B, length). ``offset``: token position of word 0 (1 after the start token)."""
    masks = np.zeros((len(texts), length, world.IMAGE_SIZE, world.IMAGE_SIZE), np.float32)
    weight = np.zeros((len(texts), length), np.float32)
    for b, (text, scene) in enumerate(zip(texts, scenes)):
        cover = [world.coverage(o) for o in scene.objects]  # (64, 64) each
        for i, objs in groundings(text, scene):
            t = i + offset
            if t < length and objs:
                masks[b, t] = np.clip(sum(cover[j] for j in objs), 0.0, 1.0)
                weight[b, t] = 1.0
    return torch.from_numpy(masks), torch.from_numpy(weight)


class record_cross_attention:
    """``with record_cross_attention(unet) as probs:`` one forward pass; ``probs`` then holds a
    (B, N, T) tensor per cross-attention layer, head-averaged, with its gradient. The layers are
    wrapped with the Features tab's capture processor (``vgen.attention``); the original
    processors are restored on exit."""

    def __init__(self, unet):
        self.unet, self.probs = unet, []

    def __enter__(self) -> list:
        from ..attention import CaptureProcessor

        self.saved = self.unet.attn_processors
        self.unet.set_attn_processor({
            name: CaptureProcessor(p, "", self) if name.endswith("attn2.processor") else p
            for name, p in self.saved.items()
        })
        return self.probs

    def __exit__(self, *exc) -> bool:
        self.unet.set_attn_processor(self.saved)
        return False

    def _record(self, kind, attn, hidden_states, encoder_hidden_states, attention_mask) -> None:
        """Called by the capture processor after the layer's own output is computed."""
        hs = hidden_states.flatten(2).transpose(1, 2) if hidden_states.ndim == 4 else hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hs))  # (B*heads, N, d)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B*heads, T, d)
        probs = attn.get_attention_scores(query, key, None)  # (B*heads, N, T)
        self.probs.append(probs.view(hs.shape[0], attn.heads, *probs.shape[1:]).mean(1))  # (B, N, T)


def token_loss(probs: list[torch.Tensor], masks: torch.Tensor, weight: torch.Tensor,
               latent_hw: tuple[int, int]) -> torch.Tensor:
    """TokenCompose's L_token over every recorded layer (masks pooled to the layer's grid)."""
    if not probs or weight.sum() == 0:
        return masks.new_zeros(())
    lat_h, lat_w = latent_hw
    total = masks.new_zeros(())
    for p in probs:  # (B, N, T)
        n = p.shape[1]
        scale = round((lat_h * lat_w / n) ** 0.5)
        h, w = lat_h // scale, lat_w // scale
        m = F.adaptive_avg_pool2d(masks, (h, w)).flatten(2)  # (B, T, N)
        inside = torch.einsum("bnt,btn->bt", p, m)  # attention mass on the named objects
        frac = inside / p.sum(1).clamp_min(1e-8)  # (B, T)
        total = total + ((1 - frac) ** 2 * weight).sum() / weight.sum()
    return total / len(probs)
