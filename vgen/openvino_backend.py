"""``VGEN_BACKEND=openvino``: a job's networks run by OpenVINO's CPU plugin instead of PyTorch.

Where OpenVINO's CPU kernels beat PyTorch's (the README's "OpenVINO as a backend" has the
figures), the denoiser, which does nearly all of a job's arithmetic, the text encoder and the
VAE's decoder (the full one or the tiny autoencoder's) run there. It is plain ``openvino`` (``convert_model``,
``compile_model``; :mod:`vgen.openvino_ir`), not optimum-intel, whose pins
(``huggingface_hub<1.22``) cannot live with vgen's; the rest of the job (tokenizers, scheduler,
callbacks, the VAE's encoder) is the same diffusers pipeline as always.

A stand-in takes a component's place in a job view and hands every attribute to the torch
module (``config``, ``add_embedding``, ``set_attn_processor``, ``encode``...), running on an IR
only the calls it can take exactly (:class:`_StandIn`):

* :class:`OpenVINODenoiser` for ``unet``: GLIGEN's grounding (``cross_attention_kwargs=
  {"gligen": ...}``) becomes three more IR inputs (:func:`_grounding`). Any other
  ``cross_attention_kwargs``, ``added_cond_kwargs`` or a call after someone changed the torch
  UNet's attention processors or hung a hook on one of its modules (the Features tab, attention
  maps) runs the torch UNet, so looking inside the model still sees the model.
* :class:`OpenVINOTextEncoder` for a CLIP ``text_encoder``: prompts, one row per IR call (rows
  are independent in CLIP), with the hidden states when asked (``clip_skip``, SDXL). Calls with
  an attention mask (GLIGEN's phrases, padded to their longest) run on PyTorch.
* :class:`OpenVINOAutoencoder` for the job's ``vae``, the model's ``AutoencoderKL`` or TAESD
  (``AutoencoderTiny``) for the fast decoder: its ``decode``, one latent per IR call;
  ``encode`` and tiled decoding are PyTorch's.

A call under autograd (layout guidance) always runs on PyTorch. ``used`` counts the calls each
way; the job reports the denoiser's (``extras["backend"]``, the PNG's ``Backend``) and which
parts ran on OpenVINO (``extras["openvino_parts"]``).
"""

from __future__ import annotations

import importlib
import weakref

import torch

from . import config
from .errors import ModelError
from .openvino_ir import IRCache

BACKENDS = ("torch", "openvino")
PART_LABELS = {"text_encoder": "text encoder", "text_encoder_2": "second text encoder", "unet": "denoiser",
               "vae": "decoder"}  # the components a stand-in can take, as the job reports them
GLIGEN = ("boxes", "positive_embeddings", "masks")  # cross_attention_kwargs["gligen"]
# The CLIP text models a stand-in serves: the output class and its fields before hidden_states.
TEXT_OUTPUTS = {
    "CLIPTextModel": ("transformers.modeling_outputs", "BaseModelOutputWithPooling",
                      ("last_hidden_state", "pooler_output")),
    "CLIPTextModelWithProjection": ("transformers.models.clip.modeling_clip", "CLIPTextModelOutput",
                                    ("text_embeds", "last_hidden_state")),
}


def backend() -> str:
    """``VGEN_BACKEND`` (``torch``, the default, or ``openvino``); another value raises
    ModelError naming the allowed ones, and ``openvino`` without the package says how to get it."""
    name = config.backend_setting()
    if name not in BACKENDS:
        raise ModelError(f"VGEN_BACKEND={name!r} is not one of {', '.join(BACKENDS)}")
    if name == "openvino":
        try:
            importlib.import_module("openvino")
        except ImportError as e:
            raise ModelError("VGEN_BACKEND=openvino needs the openvino package "
                             "(pip install openvino), or unset VGEN_BACKEND for PyTorch") from e
    return name


def stand_ins_for(model, vae=None) -> dict[str, torch.nn.Module]:
    """The components a job view of ``model`` swaps in under ``VGEN_BACKEND=openvino``
    (``unet``, CLIP's ``text_encoder`` and ``text_encoder_2``, and ``vae``: ``vae``, the job's
    tiny autoencoder, else the model's own), one of each per model and module, kept in
    ``model.views``; {} under the torch backend or on a device other than the CPU."""
    if backend() != "openvino" or model.device.type != "cpu":
        return {}
    wanted = {"unet": (getattr(model.pipe, "unet", None), OpenVINODenoiser),
              "text_encoder": (getattr(model.pipe, "text_encoder", None), OpenVINOTextEncoder),
              "text_encoder_2": (getattr(model.pipe, "text_encoder_2", None), OpenVINOTextEncoder),
              "vae": (vae if vae is not None else getattr(model.pipe, "vae", None), OpenVINOAutoencoder)}
    out = {}
    with model.cache_lock:
        for name, (module, kind) in wanted.items():
            if not kind.serves(module):
                continue
            key = ("openvino", name, id(module))
            if key not in model.views:
                ir = IRCache(module, kind.role, model.ref, model.revision, model.precision, model.threads)
                model.views[key] = kind(module, ir)
            out[name] = model.views[key]
    return out


def denoiser_for(model) -> "OpenVINODenoiser | None":
    """The UNet's stand-in for ``model``'s jobs (:func:`stand_ins_for`), or None."""
    return stand_ins_for(model).get("unet")


def stand_ins_of(view) -> dict[str, "_StandIn"]:
    """The stand-ins among a job view's components, by name."""
    return {name: m for name in PART_LABELS if isinstance(m := getattr(view, name, None), _StandIn)}


# Hooks that only record what a call asked for or how long it took: transformers 5 installs
# these on a text model's first call with output_hidden_states, and vgen's phase timers hang
# theirs on what vae.decode runs (AutoencoderKL's post_quant_conv, seen through the stand-in).
RECORDING_HOOKS = ("transformers.utils.output_capturing", "vgen.speed")


def _hooks_of(module: torch.nn.Module) -> tuple:
    """What must be as it was for the IR to compute what the torch module would: the identity
    of each attention processor and the hooks on every module (but ``RECORDING_HOOKS``)."""
    def ids(hooks: dict) -> tuple:
        return tuple(k for k, h in hooks.items() if getattr(h, "__module__", "") not in RECORDING_HOOKS)

    procs = tuple(id(p) for p in getattr(module, "attn_processors", {}).values())
    hooks = tuple((id(m), ids(m._forward_hooks), ids(m._forward_pre_hooks)) for m in module.modules())
    return procs, hooks


class _StandIn(torch.nn.Module):
    """A job view's component whose calls run on OpenVINO IRs where they can (see the module
    docstring). ``watched`` is the part of the torch module the IR replaces: the calls stay on
    the IR while its hooks and processors are as they were when the stand-in was made."""

    role = ""

    def __init__(self, module: torch.nn.Module, ir: IRCache, watched: torch.nn.Module | None = None):
        super().__init__()
        self.torch_module = module
        self._ir = ir
        self._watched = [watched if watched is not None else module]  # a list: not a submodule twice
        self._baseline = _hooks_of(self._watched[0])
        self.used = {"openvino": 0, "torch": 0}
        self.int8_calls = 0  # of the OpenVINO ones, on an int8 IR (vgen.openvino_int8)
        self.recording: list | None = None  # vgen.openvino_int8: (signature, IR inputs) of each call

    @classmethod
    def serves(cls, module) -> bool:
        return isinstance(module, torch.nn.Module)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("torch_module"), name)

    @property
    def dtype(self) -> torch.dtype:
        return self.torch_module.dtype

    @property
    def device(self) -> torch.device:
        return self.torch_module.device

    @property
    def converted(self) -> int:
        """Conversions this process made for this module (not read back from the cache)."""
        return self._ir.converted

    def _exact(self) -> bool:
        """Whether the IR computes what the torch module would now."""
        return not torch.is_grad_enabled() and _hooks_of(self._watched[0]) == self._baseline

    def _on_torch(self, call, *args, **kwargs):
        self.used["torch"] += 1
        return call(*args, **kwargs)

    def _infer(self, inputs: dict[str, torch.Tensor], traced, variant: str = "") -> list[torch.Tensor]:
        """The IR's outputs for ``inputs`` (converted or read back on a signature's first call)."""
        request, int8 = self._ir.request(inputs, traced, variant)
        arrays = [v.detach().contiguous().numpy() if not v.is_floating_point()
                  else v.detach().float().contiguous().numpy() for v in inputs.values()]
        if self.recording is not None:
            self.recording.append((self._ir.signature(inputs, variant), [a.copy() for a in arrays]))
        outs = request.infer(arrays).to_tuple()
        self.used["openvino"] += 1
        self.int8_calls += int8
        return [torch.from_numpy(o.copy()) for o in outs]


# ---- the denoiser --------------------------------------------------------------------------

class _Positional(torch.nn.Module):
    """The UNet called with positional tensors ``names`` (what the converter traces); GLIGEN's
    grounding tensors (``GLIGEN``) go back into ``cross_attention_kwargs``."""

    def __init__(self, unet: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.unet, self.names = unet, names

    def forward(self, *tensors):
        kw = dict(zip(self.names, tensors))
        gligen = {k: kw.pop(k) for k in GLIGEN if k in kw}
        if gligen:
            kw["cross_attention_kwargs"] = {"gligen": gligen}
        return self.unet(kw.pop("sample"), kw.pop("timestep"), kw.pop("encoder_hidden_states"), **kw,
                         return_dict=False)[0]


def _grounding(fusers: list, cross_attention_kwargs) -> tuple[bool, dict]:
    """Whether a call with ``cross_attention_kwargs`` can run on an IR, and the grounding
    tensors that IR takes. Only GLIGEN's ``gligen`` inputs can: with every fuser disabled
    (scheduled sampling's later steps) they change nothing, so the plain IR runs; with every
    fuser enabled they are the IR's inputs (the flags are Python, fixed in the trace)."""
    if not cross_attention_kwargs:
        return True, {}
    gligen = cross_attention_kwargs.get("gligen") if set(cross_attention_kwargs) == {"gligen"} else None
    if not isinstance(gligen, dict) or set(gligen) != set(GLIGEN) or not fusers:
        return False, {}
    enabled = {bool(m.enabled) for m in fusers}
    if enabled == {False}:
        return True, {}
    if enabled == {True} and all(isinstance(gligen[k], torch.Tensor) for k in GLIGEN):
        return True, {k: gligen[k] for k in GLIGEN}
    return False, {}


class OpenVINODenoiser(_StandIn):
    """A job view's ``unet`` under the OpenVINO backend."""

    role = "denoiser"

    def __init__(self, unet: torch.nn.Module, ir: IRCache):
        super().__init__(unet, ir)
        self._fusers = [m for m in unet.modules() if type(m).__name__ == "GatedSelfAttentionDense"]

    def forward(self, sample, timestep, encoder_hidden_states=None, timestep_cond=None,
                cross_attention_kwargs=None, added_cond_kwargs=None, return_dict=True, **kwargs):
        takes, grounding = _grounding(self._fusers, cross_attention_kwargs)
        if not (takes and not added_cond_kwargs and not kwargs and encoder_hidden_states is not None
                and self._exact()):
            return self._on_torch(self.torch_module, sample, timestep, encoder_hidden_states,
                                  timestep_cond=timestep_cond, cross_attention_kwargs=cross_attention_kwargs,
                                  added_cond_kwargs=added_cond_kwargs, return_dict=return_dict, **kwargs)
        tensors = {"sample": sample, "timestep": torch.as_tensor(timestep, dtype=torch.float32),
                   "encoder_hidden_states": encoder_hidden_states, "timestep_cond": timestep_cond,
                   **grounding}
        inputs = {k: v for k, v in tensors.items() if v is not None}
        names = tuple(inputs)
        out = self._infer(inputs, lambda unet: _Positional(unet, names))[0]
        sample_out = out.to(sample.dtype)  # (B, C, H, W), in the dtype the torch UNet returns
        if not return_dict:
            return (sample_out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=sample_out)


# ---- the text encoder ----------------------------------------------------------------------

class _TextOutputs(torch.nn.Module):
    """A CLIP text model called on ``input_ids``, its outputs flat: the fields before
    ``hidden_states`` (``TEXT_OUTPUTS``), then each hidden state when ``hidden``."""

    def __init__(self, encoder: torch.nn.Module, hidden: bool):
        super().__init__()
        self.encoder, self.hidden = encoder, hidden

    def forward(self, input_ids):
        out = self.encoder(input_ids, output_hidden_states=self.hidden, return_dict=True)
        fields = TEXT_OUTPUTS[type(self.encoder).__name__][2]
        return (*(out[f] for f in fields), *(out.hidden_states if self.hidden else ()))


class OpenVINOTextEncoder(_StandIn):
    """A job view's CLIP ``text_encoder`` under the OpenVINO backend."""

    role = "text_encoder"

    @classmethod
    def serves(cls, module) -> bool:
        return isinstance(module, torch.nn.Module) and type(module).__name__ in TEXT_OUTPUTS

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        if (not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or attention_mask is not None
                or position_ids is not None or output_attentions or kwargs or not self._exact()):
            return self._on_torch(self.torch_module, input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids, output_attentions=output_attentions,
                                  output_hidden_states=output_hidden_states, return_dict=return_dict, **kwargs)
        # 1. One row per IR call: CLIP's rows do not see each other (a causal mask, no padding mask).
        hidden = bool(output_hidden_states)
        rows = [self._infer({"input_ids": row[None]}, lambda enc: _TextOutputs(enc, hidden),
                            variant=f"hidden_states={hidden}") for row in input_ids]  # each (1, L, D)...
        flat = [torch.cat(parts) for parts in zip(*rows)]  # (B, L, D) or (B, D) each
        # 2. The torch model's output class, its hidden states as a tuple.
        module, cls_name, fields = TEXT_OUTPUTS[type(self.torch_module).__name__]
        cls = getattr(importlib.import_module(module), cls_name)
        out = cls(**dict(zip(fields, flat)), hidden_states=tuple(flat[len(fields):]) if hidden else None)
        return out if return_dict is not False else out.to_tuple()


# ---- the tiny autoencoder's decoder --------------------------------------------------------

class _Decode(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z, return_dict=False)[0]


class _DecoderCall(torch.nn.Module):
    """The stand-in autoencoder's ``decoder``: what ``vae.decode`` runs, as a module, so that
    phase timers (``vgen.speed.PhaseTimer`` watches ``vae.decoder``) time the IR's calls. For
    AutoencoderKL that is all of ``decode``, ``post_quant_conv`` included: nothing in vgen calls
    a VAE's decoder but through ``decode``."""

    def __init__(self, owner: "OpenVINOAutoencoder"):
        super().__init__()
        self._owner = weakref.ref(owner)  # not a submodule: the owner holds this one

    def forward(self, z):
        return self._owner()._decode(z)


class OpenVINOAutoencoder(_StandIn):
    """A job's ``vae`` under the OpenVINO backend: the model's ``AutoencoderKL`` (its
    ``decode``: ``post_quant_conv`` then the decoder) or a fast job's TAESD (``AutoencoderTiny``)."""

    role = "decoder"
    SERVED = ("AutoencoderKL", "AutoencoderTiny")  # exact classes: their decode is one latent in, one image out

    def __init__(self, vae: torch.nn.Module, ir: IRCache):
        # AutoencoderKL's decode runs post_quant_conv before the decoder: watch all of it.
        super().__init__(vae, ir, watched=vae.decoder if type(vae).__name__ == "AutoencoderTiny" else vae)
        self.decoder = _DecoderCall(self)

    @classmethod
    def serves(cls, module) -> bool:
        return isinstance(module, torch.nn.Module) and type(module).__name__ in cls.SERVED

    def decode(self, z, generator=None, return_dict=True):
        sample = self.decoder(z)  # (B, 3, H, W) in [-1, 1]
        if not return_dict:
            return (sample,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=sample)

    def _decode(self, z):
        if not isinstance(z, torch.Tensor) or z.dim() != 4 or self.torch_module.use_tiling or not self._exact():
            return self._on_torch(self.torch_module.decode, z, return_dict=False)[0]
        rows = [self._infer({"latents": row[None]}, _Decode)[0] for row in z]  # each (1, 3, H, W)
        return torch.cat(rows)  # fp32, as the torch decoder returns it (vgen.precision: fp32 at its boundaries)


def usage(stand_ins: dict[str, "_StandIn"]) -> dict[str, dict]:
    """A copy of each stand-in's ``used`` counts, to tell a job's own calls afterwards."""
    return {name: {**m.used, "int8": m.int8_calls} for name, m in stand_ins.items()}


def ran_int8(stand_ins: dict[str, "_StandIn"], before: dict[str, dict], name: str = "unet") -> bool:
    """Whether stand-in ``name`` made calls on an int8 IR since ``before`` (:func:`usage`)."""
    return name in stand_ins and stand_ins[name].int8_calls > before[name]["int8"]


def parts_on_openvino(stand_ins: dict[str, "_StandIn"], before: dict[str, dict]) -> str:
    """Which of a job's parts made calls on OpenVINO since ``before`` (:func:`usage`), e.g.
    "text encoder, denoiser (int8), decoder"; "" for none."""
    ran = [name for name in PART_LABELS
           if name in stand_ins and stand_ins[name].used["openvino"] > before[name]["openvino"]]
    return ", ".join(PART_LABELS[name] + (" (int8)" if ran_int8(stand_ins, before, name) else "") for name in ran)


def describe_use(stand_in: "OpenVINODenoiser | None", before: dict | None) -> str:
    """What ran a job's denoiser calls, from ``stand_in.used`` now and ``before`` the job:
    ``openvino``, ``torch`` (every call needed the torch UNet), ``openvino+torch``, or "" with
    no stand-in."""
    if stand_in is None or before is None:
        return ""
    ov = stand_in.used["openvino"] - before["openvino"]
    pt = stand_in.used["torch"] - before["torch"]
    return "openvino+torch" if ov and pt else ("openvino" if ov else "torch")


def fallback_note(used: str) -> str:
    """Why a job under ``VGEN_BACKEND=openvino`` ran (some of) its denoiser calls on PyTorch,
    from :func:`describe_use`'s answer; "" when it did not."""
    if used not in ("torch", "openvino+torch"):
        return ""
    which = "Every" if used == "torch" else "Some"
    return (f"{which} denoiser call of this job ran on PyTorch: it looks inside the UNet or steers it "
            "(layout guidance, attention maps, the Features tab), which the OpenVINO "
            "model cannot show.")
