"""Per-token cross-attention capture (DAAM: Tang et al. 2022, "What the DAAM: Interpreting Stable
Diffusion Using Cross Attention"): the torch side; the maps it returns and their rendering are
:mod:`vgen.attention_maps` (torch-free, so the web server renders them).

While a job runs, :class:`AttentionCapture` swaps the UNet's cross-attention processors (the
``attn2`` layers) for a wrapper through diffusers' attention-processor API
(``unet.set_attn_processor``). The wrapper lets the original processor compute the layer's
output (so images are bit-identical with and without capture) and, from the same inputs,
computes ``softmax(Q K^T * scale)`` for the text-conditioned part of the batch with
``attn.get_attention_scores``, averages the heads, and adds the result to a running sum per
(step, block kind, resolution). Only the prompt's columns are kept (plus the start and end tokens
and the padding summed into one column), so a 50-step 512 px run stays at tens of MB.
The original processors are restored on exit, whether the job finished, failed or was
cancelled. :meth:`AttentionCapture.result` hands the sums over as numpy arrays in an
:class:`~vgen.attention_maps.AttentionMaps`.

:func:`generate_with_maps` runs a :class:`~vgen.requests.GenerateRequest` or any
:class:`~vgen.requests.EditRequest` with the capture installed; :func:`inspect_generation` can
also record the denoising path (see :mod:`vgen.denoising`) and returns an
:class:`~vgen.attention_maps.Inspection`.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

from .attention_maps import AttentionMaps, Inspection, PromptTokens
from .errors import UnsupportedModelError
from .jobs import JobControl
from .pipelines import ModelCache
from .requests import EditRequest, GenerateRequest, GenerationResult, Limits


# ---- prompt tokens ------------------------------------------------------------------------

def _clean(token: str) -> str:
    token = token.replace("</w>", "")
    return token.lstrip("\u2581\u0120") or token  # SentencePiece / byte-level word markers


def prompt_tokens(tokenizer, prompt: str) -> PromptTokens:
    """Tokenize ``prompt`` exactly as diffusers' ``encode_prompt`` does (padded to the
    tokenizer's ``model_max_length``, truncated)."""
    max_len = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if max_len > 4096:  # "no limit" sentinel of some tokenizers
        max_len = 77
    kw = dict(padding="max_length", max_length=max_len, truncation=True)
    try:  # fast tokenizers also say where each token came from: unknown words keep their text
        enc = tokenizer(prompt, return_offsets_mapping=True, **kw)
        offsets = list(enc["offset_mapping"])
    except (NotImplementedError, TypeError, ValueError, KeyError):
        enc, offsets = tokenizer(prompt, **kw), None
    ids = list(enc.input_ids)
    raw = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    start = 0 if ids and bos is not None and ids[0] == bos else None
    first = 0 if start is None else 1
    end = None
    for i in range(first, len(ids)):
        if (eos is not None and ids[i] == eos) or (eos is None and ids[i] == pad):
            end = i
            break
    stop = end if end is not None else len(ids)
    positions = [i for i in range(first, stop) if ids[i] not in special or ids[i] == tokenizer.unk_token_id]
    padding = tuple(range(stop + 1, len(ids))) if end is not None else tuple(range(stop, len(ids)))
    unk = tokenizer.unk_token_id
    tokens = [prompt[offsets[i][0]:offsets[i][1]] if offsets and ids[i] == unk and offsets[i][1] > offsets[i][0]
              else _clean(raw[i]) for i in positions]
    # Word grouping: CLIP BPE ends a word with "</w>"; SentencePiece/byte-level BPE start one
    # with a marker; word-level tokenizers (the shapes model's) have one token per word.
    toks = [raw[i] for i in positions]
    words, w = [], 0
    if any(t.endswith("</w>") for t in toks):
        for t in toks:
            words.append(w)
            w += t.endswith("</w>")
    elif any(t[:1] in ("\u2581", "\u0120") for t in toks):
        for j, t in enumerate(toks):
            w += j > 0 and t[:1] in ("\u2581", "\u0120")
            words.append(w)
    else:
        words = list(range(len(toks)))
    return PromptTokens(tuple(tokens), tuple(positions), tuple(words), start, end, padding, len(ids))


# ---- capture ------------------------------------------------------------------------------

class CaptureProcessor:
    """Wraps one cross-attention layer's processor: the original computes the output, this one
    also records the text-conditioned attention probabilities."""

    def __init__(self, original, kind: str, capture: "AttentionCapture"):
        self.original = original
        self.kind = kind
        self.capture = capture

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        out = self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                            attention_mask=attention_mask, **kwargs)
        if encoder_hidden_states is not None:
            self.capture._record(self.kind, attn, hidden_states, encoder_hidden_states, attention_mask)
        return out


def _block_kind(name: str) -> str:
    for kind, prefix in (("down", "down_blocks."), ("mid", "mid_block."), ("up", "up_blocks.")):
        if name.startswith(prefix):
            return kind
    return "mid"


def _grid_size(n: int, lat_h: int, lat_w: int) -> tuple[int, int]:
    """(h, w) of a feature map of ``n`` positions inside a UNet with a ``lat_h x lat_w`` input."""
    f = 1
    while f <= max(lat_h, lat_w):
        h, w = -(-lat_h // f), -(-lat_w // f)
        if h * w == n:
            return h, w
        f *= 2
    side = int(round(n ** 0.5))
    if side * side == n:
        return side, side
    raise RuntimeError(f"cannot place {n} attention positions on a {lat_h}x{lat_w} latent grid")


class AttentionCapture:
    """Records cross-attention while a pipeline runs.

    Use as ``hooks`` of :func:`vgen.generate.generate` / :func:`vgen.edit.edit`
    (``hooks(view)`` binds it to the job's pipeline and returns it as a context manager), and
    forward ``JobControl.on_step`` to :meth:`on_step` so steps are counted as the pipeline runs
    them (an img2img job runs fewer steps than asked). ``instruct``: InstructPix2Pix batches
    ``[text, image, unconditional]``; other pipelines ``[unconditional, text]``.
    """

    def __init__(self, prompt: str, num_images: int = 1, instruct: bool = False):
        self.prompt = prompt
        self.num_images = max(1, int(num_images))
        self.instruct = instruct
        self._view = None
        self._saved: dict | None = None
        self._hook = None
        self._reset()

    def _reset(self) -> None:
        self.step = 0
        self.timesteps: list[float] = []
        self.tokens: PromptTokens | None = None
        self.latent_hw: tuple[int, int] | None = None
        self.vae_scale = 8
        self._sums: dict[tuple, torch.Tensor] = {}
        self._layers: dict[tuple, int] = {}
        self._columns: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._unet_calls = 0
        self._steps_observed = False

    # hooks(view) -> context manager
    def __call__(self, view) -> "AttentionCapture":
        if getattr(view, "unet", None) is None:
            raise UnsupportedModelError(
                "attention maps need a UNet pipeline (the Stable Diffusion family); this model has none"
            )
        if getattr(view, "tokenizer", None) is None:
            raise UnsupportedModelError("attention maps need the pipeline's tokenizer; this model has none")
        self._view = view
        return self

    def __enter__(self) -> "AttentionCapture":
        if self._view is None:
            raise RuntimeError("bind the capture to a pipeline first: capture(view)")
        unet = self._view.unet
        self._reset()
        self.tokens = prompt_tokens(self._view.tokenizer, self.prompt)
        self.vae_scale = int(getattr(self._view, "vae_scale_factor", 8) or 8)
        saved = dict(unet.attn_processors)
        procs = {
            name: CaptureProcessor(p, _block_kind(name), self) if name.endswith("attn2.processor") else p
            for name, p in saved.items()
        }
        self._hook = unet.register_forward_pre_hook(self._pre_unet, with_kwargs=True)
        try:
            unet.set_attn_processor(procs)
        except BaseException:
            self._restore(unet, saved)
            raise
        self._saved = saved
        return self

    def __exit__(self, *exc) -> bool:
        if self._view is not None:
            self._restore(self._view.unet, self._saved)
        return False

    def _restore(self, unet, saved: dict | None) -> None:
        try:
            if saved is not None:
                unet.set_attn_processor(dict(saved))  # set_attn_processor pops from the dict it gets
        finally:
            if self._hook is not None:
                self._hook.remove()
            self._hook = None
            self._saved = None

    def _pre_unet(self, module, args, kwargs):
        if not self._steps_observed:  # nobody forwards on_step: one UNet call per step
            self.step = self._unet_calls
        self._unet_calls += 1
        sample = args[0] if args else kwargs["sample"]
        self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        if len(self.timesteps) <= self.step:
            t = args[1] if len(args) > 1 else kwargs.get("timestep")
            self.timesteps.append(float(t.flatten()[0]) if torch.is_tensor(t) else float(t))
        return None

    def on_step(self, pipe, i: int, t, callback_kwargs: dict) -> None:
        """Step ``i`` (0-based) of the pipeline ended; what follows belongs to step ``i + 1``.
        Without these calls, each UNet call counts as one step."""
        self._steps_observed = True
        self.step = i + 1

    def _columns_for(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if length not in self._columns:
            tk = self.tokens
            cols = ([tk.start] if tk.start is not None else []) + list(tk.positions)
            cols += [tk.end] if tk.end is not None else []
            cols = [c for c in cols if c < length]
            pad = [p for p in tk.padding if p < length]
            self._columns[length] = (torch.tensor(cols, dtype=torch.long, device=device),
                                     torch.tensor(pad, dtype=torch.long, device=device))
        return self._columns[length]

    def _record(self, kind: str, attn, hidden_states, encoder_hidden_states, attention_mask) -> None:
        batch = hidden_states.shape[0]
        chunks = batch // self.num_images if batch % self.num_images == 0 else 1
        per = batch // chunks
        c = 0 if self.instruct else chunks - 1
        hs = hidden_states[c * per:(c + 1) * per]
        es = encoder_hidden_states[c * per:(c + 1) * per]
        if hs.ndim == 4:
            hs = hs.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hs = attn.group_norm(hs.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            es = attn.norm_encoder_hidden_states(es)
        query = attn.head_to_batch_dim(attn.to_q(hs))
        key = attn.head_to_batch_dim(attn.to_k(es))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask[c * per:(c + 1) * per], es.shape[1], per)
        probs = attn.get_attention_scores(query, key, mask)  # (per * heads, N, T)
        n, length = probs.shape[1], probs.shape[2]
        probs = probs.view(per, attn.heads, n, length).float().mean(1)  # (per, N, T)
        cols, pad = self._columns_for(length, probs.device)
        kept = probs.index_select(2, cols)
        pad_col = probs.index_select(2, pad).sum(2, keepdim=True) if len(pad) else probs.new_zeros(per, n, 1)
        kept = torch.cat([kept, pad_col], 2)  # stays on the device until the job ends
        h, w = _grid_size(n, *(self.latent_hw or (int(n ** 0.5), int(n ** 0.5))))
        k = (self.step, kind, h, w)
        if k in self._sums:
            self._sums[k] += kept
            self._layers[k] += 1
        else:
            self._sums[k] = kept.clone()
            self._layers[k] = 1

    def result(self, image_size: tuple[int, int] | None = None) -> "AttentionMaps":
        """The recorded maps; ``image_size`` (W, H) defaults to the latent size times the VAE's
        scale factor (the pipeline's output size)."""
        if self.tokens is None or not self._sums:
            raise RuntimeError("no cross-attention was recorded (did the pipeline run with the capture?)")
        if image_size is None:
            lh, lw = self.latent_hw
            image_size = (lw * self.vae_scale, lh * self.vae_scale)
        sums = {}
        for (step, kind, h, w), t in self._sums.items():
            sums[(step, kind, h, w)] = t.cpu().reshape(t.shape[0], h, w, t.shape[2]).numpy()
        return AttentionMaps(self.tokens, sums, dict(self._layers), tuple(self.timesteps), tuple(image_size),
                             self.prompt)


# ---- running a job with the capture -------------------------------------------------------

def combine_hooks(*hooks):
    """One ``hooks(view)`` from several: each is entered in order and exited in reverse."""

    def combined(view):
        stack = contextlib.ExitStack()
        bound = [h(view) for h in hooks if h is not None]

        @contextlib.contextmanager
        def cm():
            with stack:
                for b in bound:
                    stack.enter_context(b)
                yield

        return cm()

    return combined


def with_step_observers(control: JobControl | None, *observers, last: bool = False) -> JobControl:
    """A copy of ``control`` (sharing its cancel event) whose ``on_step`` also calls each
    observer's ``on_step``: before its own, or after it with ``last``."""
    control = control or JobControl()
    previous = control.on_step
    watchers = [o for o in observers if o is not None]

    def on_step(pipe, i, t, kwargs):
        if previous is not None and last:
            previous(pipe, i, t, kwargs)
        for o in watchers:
            o.on_step(pipe, i, t, kwargs)
        if previous is not None and not last:
            previous(pipe, i, t, kwargs)

    return replace(control, on_step=on_step)


def inspect_generation(req: GenerateRequest, control: JobControl | None = None,
                       cache: ModelCache | None = None, limits: Limits | None = None, *,
                       maps: bool = True, path: bool = False) -> Inspection:
    """Run ``req`` (text-to-image, or an edit in any mode) recording attention maps and/or the
    denoising path. Images are identical to a plain run with the same request."""
    from .denoising import DenoisingPath
    from .edit import edit
    from .generate import generate

    instruct = isinstance(req, EditRequest) and req.mode == "instruct"
    capture = AttentionCapture(req.prompt, req.num_images, instruct) if maps else None
    recorder = DenoisingPath(req.num_images, instruct) if path else None
    hooks = combine_hooks(capture, recorder) if (capture or recorder) else None
    control = with_step_observers(control, capture, recorder)
    run = edit if isinstance(req, EditRequest) else generate
    result = run(req, control=control, cache=cache, limits=limits, hooks=hooks)
    size = result.images[0].size if result.images else None
    return Inspection(result, capture.result(size) if capture else None,
                      recorder.frames if recorder else None)


def generate_with_maps(req: GenerateRequest, control: JobControl | None = None,
                       cache: ModelCache | None = None, limits: Limits | None = None
                       ) -> tuple[GenerationResult, AttentionMaps]:
    """Run ``req`` (generate or edit) and return its result with its cross-attention maps."""
    out = inspect_generation(req, control, cache, limits, maps=True, path=False)
    return out.result, out.maps
