"""A training signal that tells the GLIGEN fusers where each object is: the box-attention loss.

GLIGEN (Li et al. 2023) learns grounding from the denoising loss alone, through gates that start
at zero: in the first thousands of steps the fusers' attention is random, their output is noise the
gates learn to shut out, and on a CPU budget they never start to ground. This loss supervises the
routing directly, as the attention losses of layout-to-image work do (the inside-box attention
energy of Chen et al. 2023, "Training-Free Layout Control with Cross-Attention Guidance", and the
token-level grounding loss of TokenCompose, Wang et al. 2024, here put on the fusers rather than the
cross-attention): in every fuser's self-attention over [visual tokens; grounding tokens], each
visual token inside an object's box should attend, among the grounding tokens, to that object's.
The loss is the cross-entropy of that choice, averaged over heads, the tokens inside a box and the
fusers; tokens in no box are left free. The denoising loss still trains everything it trained.

Hooked through diffusers' public attention-processor interface (``Attention.set_processor``) on
the fusers' ``attn`` only, for training; ``restore`` puts the previous processors back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RecordingProcessor:
    """Plain scaled-dot-product attention (as ``AttnProcessor``) that keeps the logits of the
    visual queries against the last ``n_objs`` keys (the grounding tokens) for the loss."""

    def __init__(self, n_objs: int, store: list):
        self.n_objs, self.store = n_objs, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        b, n, _ = hidden_states.shape  # (B, V + n_objs, C)
        heads = attn.heads
        q, k, v = (f(hidden_states) for f in (attn.to_q, attn.to_k, attn.to_v))
        q, k, v = (t.view(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
        logits = (q @ k.transpose(-1, -2)) * attn.scale  # (B, H, N, N)
        out = logits.softmax(dim=-1) @ v  # (B, H, N, d)
        n_vis = n - self.n_objs
        self.store.append(logits[:, :, :n_vis, n_vis:])  # (B, H, V, n_objs)
        out = out.transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


def fuser_attentions(unet) -> list:
    """Every gated self-attention layer's ``attn`` module."""
    return [m.fuser.attn for m in unet.modules() if hasattr(m, "fuser") and m.fuser is not None]


def install(unet, n_objs: int) -> tuple[list, list]:
    """Recording processors on the fusers; returns (store, previous processors)."""
    store: list = []
    mods = fuser_attentions(unet)
    previous = [m.processor for m in mods]
    for m in mods:
        m.set_processor(RecordingProcessor(n_objs, store))
    return store, previous


def restore(unet, previous: list) -> None:
    for m, p in zip(fuser_attentions(unet), previous):
        m.set_processor(p)


def box_targets(boxes: torch.Tensor, masks: torch.Tensor, side: int) -> torch.Tensor:
    """For each visual token of a ``side`` x ``side`` grid, the index of the smallest valid box
    that holds its centre, or -1 (in no box). boxes (B, n_objs, 4) xyxy in 0..1, masks (B, n_objs)
    -> (B, side*side) long."""
    centres = (torch.arange(side, device=boxes.device, dtype=boxes.dtype) + 0.5) / side  # (S,)
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx.reshape(1, -1, 1), cy.reshape(1, -1, 1)  # (1, V, 1)
    x0, y0, x1, y1 = (boxes[:, None, :, i] for i in range(4))  # (B, 1, n_objs)
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1) & (masks[:, None, :] > 0)
    area = ((x1 - x0) * (y1 - y0)).expand_as(inside)  # (B, V, n_objs)
    area = torch.where(inside, area, torch.full_like(area, math.inf))
    best = area.argmin(dim=-1)  # (B, V)
    return torch.where(inside.any(dim=-1), best, torch.full_like(best, -1))


def box_attention_loss(store: list, boxes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy over the recorded fuser attentions (see the module docstring);
    0 when no token is in a box."""
    losses = []
    invalid = masks <= 0  # (B, n_objs)
    for logits in store:  # (B, H, V, n_objs)
        side = math.isqrt(logits.shape[2])
        if side * side != logits.shape[2]:  # the trainer's images are square
            continue
        target = box_targets(boxes, masks, side)  # (B, V)
        keep = target >= 0
        if not keep.any():
            continue
        lg = logits.float().masked_fill(invalid[:, None, None, :], -1e4)
        logp = F.log_softmax(lg, dim=-1)  # (B, H, V, n_objs)
        picked = logp.gather(-1, target.clamp(min=0)[:, None, :, None].expand(-1, lg.shape[1], -1, 1))
        losses.append(-(picked.squeeze(-1).mean(dim=1))[keep].mean())
    store.clear()
    if not losses:
        return torch.zeros((), device=boxes.device)
    return torch.stack(losses).mean()
