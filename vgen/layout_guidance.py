"""Layout guidance: move the early latents so each phrase's words attend inside its box.

Backward guidance of Chen, Laina and Vedaldi 2023 ("Training-Free Layout Control with
Cross-Attention Guidance"), the step LMD (Lian et al. 2023) also uses on top of GLIGEN: after
each of the first ``steps`` denoising steps, for ``iterations`` rounds, the UNet is run once on
the prompt (the grounded model with its GLIGEN tokens), the cross-attention of every token that
names a layout object is read, and the latents move down the gradient of the energy

    E = mean over tokens and cross-attention layers of (1 - sum(A * B) / sum(A))^2

where ``A`` is the token's attention map (head-averaged) and ``B`` the union of the boxes whose
phrase contains the word (area-averaged onto each layer's grid). The gradient is scaled to unit
RMS and multiplied by ``strength * min(1, ENERGY_GAIN * E)``, so the step shrinks as the attention settles
into its boxes.
That is TokenCompose's token loss (``vgen.shapes.grounding.token_loss``) with boxes for masks,
the loss the shapes model was trained with, so its attention is where it draws.

The attention is recorded with fresh default processors for those extra passes (the job's own
processors, e.g. the Features capture, see none of them) and the job's restored afterwards.
"""

from __future__ import annotations

import numpy as np
import torch

from .layout import Layout
from .layout_maps import FUNCTION_WORDS  # words that name no object: the Features maps' too

GUIDED_STEPS = 6  # the first denoising steps guided (where the picture's layout is decided)
GUIDED_ITERATIONS = 2  # guidance rounds after each of them
ENERGY_GAIN = 2.0  # the full step while the energy is at least 1 / ENERGY_GAIN


def _word_forms(word: str) -> set[str]:
    """A phrase word and its plural spellings ('triangle' -> triangles; 'box' -> boxes)."""
    w = word.lower()
    return {w, w + "s", w + "es"}


def token_boxes(tokens, layout: Layout) -> list[tuple[int, list[int]]]:
    """(token position, indices of the layout objects it names) for each prompt token that is a
    content word of some phrase. ``tokens``: ``vgen.attention.prompt_tokens`` of the prompt."""
    phrase_words = [
        set().union(*(_word_forms(w) for w in o.phrase.lower().replace(",", " ").split()
                      if w not in FUNCTION_WORDS) or [set()])
        for o in layout.objects
    ]
    out = []
    for text, pos in zip(tokens.tokens, tokens.positions):
        w = text.lower().strip()
        if not w or w in FUNCTION_WORDS:
            continue
        objs = [i for i, words in enumerate(phrase_words) if w in words]
        if objs:
            out.append((pos, objs))
    return out


def box_masks(tokens, layout: Layout, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (1, T, h, w) of the boxes each token names on a latent ``grid``, and which tokens
    are guided (1, T). A box covers every latent cell it touches."""
    h, w = grid
    masks = np.zeros((1, tokens.length, h, w), np.float32)
    weight = np.zeros((1, tokens.length), np.float32)
    for pos, objs in token_boxes(tokens, layout):
        for i in objs:
            x0, y0, x1, y1 = layout.objects[i].box
            r0, c0 = min(int(y0 * h), h - 1), min(int(x0 * w), w - 1)
            r1, c1 = max(r0 + 1, int(np.ceil(y1 * h))), max(c0 + 1, int(np.ceil(x1 * w)))
            masks[0, pos, r0:r1, c0:c1] = 1.0
        weight[0, pos] = 1.0
    return torch.from_numpy(masks), torch.from_numpy(weight)


def energy(probs: list[torch.Tensor], masks: torch.Tensor, weight: torch.Tensor,
           latent_hw: tuple[int, int]) -> torch.Tensor:
    """The guidance energy over every recorded cross-attention layer (the module docstring)."""
    import torch.nn.functional as F

    lat_h, lat_w = latent_hw
    total = masks.new_zeros(())
    for p in probs:  # (B, N, T)
        scale = max(1, round((lat_h * lat_w / p.shape[1]) ** 0.5))
        m = F.adaptive_avg_pool2d(masks, (lat_h // scale, lat_w // scale)).flatten(2)  # (1, T, N)
        inside = torch.einsum("bnt,btn->bt", p, m.expand(p.shape[0], -1, -1))
        frac = inside / p.sum(1).clamp_min(1e-8)  # (B, T)
        total = total + ((1 - frac) ** 2 * weight).sum() / (weight.sum() * p.shape[0])
    return total / max(1, len(probs))


class _RecordingProcessor:
    """diffusers' default attention for one layer, also keeping its attention probabilities
    (head-averaged) with their gradient."""

    def __init__(self, out: list, keep: bool):
        self.out, self.keep = out, keep

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        from diffusers.models.attention_processor import AttnProcessor

        result = AttnProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if self.keep and encoder_hidden_states is not None:
            hs = hidden_states.flatten(2).transpose(1, 2) if hidden_states.ndim == 4 else hidden_states
            q = attn.head_to_batch_dim(attn.to_q(hs))  # (B*heads, N, d)
            k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B*heads, T, d)
            probs = attn.get_attention_scores(q, k, None)  # (B*heads, N, T)
            self.out.append(probs.view(hs.shape[0], attn.heads, *probs.shape[1:]).mean(1))
        return result


class LayoutGuidance:
    """A step observer (``JobControl.on_step``) applying layout guidance to the latents it is
    handed. ``cond``: the prompt's embeddings (B, T, D); ``gligen``: the UNet's grounding
    inputs for those B images (None for a model without GLIGEN layers)."""

    def __init__(self, unet, tokens, layout: Layout, cond: torch.Tensor, *, strength: float,
                 steps: int, iterations: int, gligen: dict | None = None):
        self.unet, self.cond, self.gligen = unet, cond, gligen
        self.tokens, self.layout = tokens, layout
        self.strength, self.steps, self.iterations = strength, steps, iterations
        self.applied = 0  # guidance rounds run so far (a caller can tell guidance took place)

    def active(self) -> bool:
        return self.strength > 0 and self.steps > 0 and self.iterations > 0 and len(self.layout) > 0

    def on_step(self, pipe, i: int, t, kwargs: dict) -> None:
        timesteps = pipe.scheduler.timesteps
        if not self.active() or i >= self.steps or i + 1 >= len(timesteps) or "latents" not in kwargs:
            return
        kwargs["latents"] = self.guide(kwargs["latents"], timesteps[i + 1], pipe.scheduler)

    def guide(self, latents: torch.Tensor, t, scheduler=None) -> torch.Tensor:
        """``iterations`` rounds of guidance on ``latents`` (B, C, h, w) at timestep ``t`` (the
        next step's; ``scheduler.scale_model_input`` makes the UNet's input, as the pipeline
        does: the identity for DDPM-family solvers, the sigma scaling for Euler's)."""
        scale = scheduler.scale_model_input if scheduler is not None else (lambda x, _t: x)
        grid = tuple(latents.shape[-2:])
        saved = self.unet.attn_processors
        probs: list[torch.Tensor] = []
        # The job runs under inference_mode; these passes need autograd, on clones of its tensors.
        with torch.inference_mode(False), torch.enable_grad():
            masks, weight = box_masks(self.tokens, self.layout, grid)
            if weight.sum() == 0:
                return latents
            masks, weight = masks.to(latents.device), weight.to(latents.device)
            cond = self.cond.clone()
            extra = {"gligen": {k: v.clone() for k, v in self.gligen.items()}} if self.gligen else None
            z = latents.clone().float()
            try:
                self.unet.set_attn_processor({
                    name: _RecordingProcessor(probs, name.endswith("attn2.processor"))
                    for name in saved})
                for _ in range(self.iterations):
                    probs.clear()
                    z.requires_grad_(True)
                    self.unet(scale(z, t).to(cond.dtype), t, cond, cross_attention_kwargs=extra)
                    e = energy(probs, masks, weight, grid)
                    (g,) = torch.autograd.grad(e, z)
                    # Unit-RMS direction, step scaled by how far the attention is from its
                    # boxes: a picture already in place is left (nearly) alone.
                    step = self.strength * min(1.0, ENERGY_GAIN * e.item())
                    z = (z - step * g / g.pow(2).mean().sqrt().clamp_min(1e-12)).detach()
                    self.applied += 1
            finally:
                probs.clear()
                self.unet.set_attn_processor(saved)
        return z.to(latents.dtype)
