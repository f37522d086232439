"""``VGEN_BACKEND=openvino``: a job's denoiser run by OpenVINO's CPU plugin instead of PyTorch.

Where OpenVINO's CPU kernels beat PyTorch's (the README's "OpenVINO as a backend" has the
figures), the denoiser, which does nearly all of a job's arithmetic, runs there. It is plain
``openvino`` (``convert_model``, ``compile_model``), not optimum-intel, whose pins
(``huggingface_hub<1.22``) cannot live with vgen's; the rest of the job (text encoders,
scheduler, VAE or TAESD, callbacks) is the same diffusers pipeline as always.

1. **Convert once, at the job's shapes.** The first call of a new input signature (names and
   shapes of the UNet's tensors: a size, a batch, classifier-free guidance or not) converts the
   torch UNet's weights, as loaded, in fp32 with ``openvino.convert_model`` (its PyTorch
   frontend) into an IR saved under ``<user cache>/openvino/<key>/`` (``key``: the
   model, its revision, a fingerprint of its weights, the signature, the precision, the
   versions). Static shapes, as FastSD CPU and optimum-intel's ``reshape`` use them. Later
   processes read the IR back (seconds) instead of converting (a minute for SD's UNet).
2. **Compile with vgen's precision**: ``INFERENCE_PRECISION_HINT`` is ``bf16`` where
   ``vgen.precision`` chose bf16 for the model and ``f32`` otherwise, so a model's precision
   means the same under both backends; ``INFERENCE_NUM_THREADS`` is the model's job threads.
3. **Only calls it can take exactly**: :class:`OpenVINODenoiser` stands in for a job view's
   ``unet`` and hands every attribute to the torch UNet (``config``, ``add_embedding``,
   ``set_attn_processor``...). GLIGEN's grounding (``cross_attention_kwargs={"gligen": ...}``)
   becomes three more IR inputs (:func:`_grounding`). Any other ``cross_attention_kwargs``,
   ``added_cond_kwargs``, a call under autograd (layout guidance), or one after someone changed
   the torch UNet's attention processors or hung a hook on one of its modules (the Features
   tab, attention maps) runs the torch UNet, so looking inside the model still sees the model.
   ``used`` counts the calls each way; the job reports it (``extras["backend"]``, the PNG's
   ``Backend``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from . import config
from .errors import ModelError

logger = logging.getLogger("vgen.openvino")

BACKENDS = ("torch", "openvino")
COMPILED_KEPT = 4  # compiled signatures kept per model (sizes, guidance on or off)
FORMAT_VERSION = 1  # bump when the conversion changes: older IRs are converted again
GLIGEN = ("boxes", "positive_embeddings", "masks")  # cross_attention_kwargs["gligen"]


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


def denoiser_for(model) -> "OpenVINODenoiser | None":
    """The stand-in UNet for ``model``'s jobs under ``VGEN_BACKEND=openvino`` (one per model,
    kept in ``model.views``), or None: the torch backend, a device other than the CPU, or a
    pipeline without a UNet."""
    if backend() != "openvino" or model.device.type != "cpu":
        return None
    unet = getattr(model.pipe, "unet", None)
    if not isinstance(unet, torch.nn.Module):
        return None
    with model.cache_lock:
        stand_in = model.views.get(("openvino", "denoiser"))
        if stand_in is None:
            stand_in = OpenVINODenoiser(unet, model.ref, model.revision, model.precision, model.threads)
            model.views[("openvino", "denoiser")] = stand_in
    return stand_in


def _hooks_of(unet: torch.nn.Module) -> tuple:
    """What must be as it was for the IR to compute what the torch UNet would: the identity of
    each attention processor and the hooks on every module."""
    procs = tuple(id(p) for p in getattr(unet, "attn_processors", {}).values())
    hooks = tuple((id(m), tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for m in unet.modules())
    return procs, hooks


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


class OpenVINODenoiser(torch.nn.Module):
    """A job view's ``unet`` under the OpenVINO backend (see the module docstring)."""

    def __init__(self, unet: torch.nn.Module, ref: str, revision: str, precision: str,
                 threads: int | None):
        super().__init__()
        self.torch_unet = unet
        self._ref, self._revision, self._precision, self._threads = ref, revision, precision, threads
        self._baseline = _hooks_of(unet)
        self._fusers = [m for m in unet.modules() if type(m).__name__ == "GatedSelfAttentionDense"]
        self._compiled: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.used = {"openvino": 0, "torch": 0}
        self.converted = 0  # conversions this process made (not read back from the cache)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("torch_unet"), name)

    @property
    def dtype(self) -> torch.dtype:
        return self.torch_unet.dtype

    @property
    def device(self) -> torch.device:
        return self.torch_unet.device

    def forward(self, sample, timestep, encoder_hidden_states=None, timestep_cond=None,
                cross_attention_kwargs=None, added_cond_kwargs=None, return_dict=True, **kwargs):
        takes, grounding = _grounding(self._fusers, cross_attention_kwargs)
        tensors = {"sample": sample, "timestep": torch.as_tensor(timestep, dtype=torch.float32),
                   "encoder_hidden_states": encoder_hidden_states, "timestep_cond": timestep_cond,
                   **grounding}
        exact = (takes and not added_cond_kwargs and not kwargs
                 and not torch.is_grad_enabled() and encoder_hidden_states is not None
                 and _hooks_of(self.torch_unet) == self._baseline)
        if not exact:
            self.used["torch"] += 1
            return self.torch_unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond,
                                   cross_attention_kwargs=cross_attention_kwargs,
                                   added_cond_kwargs=added_cond_kwargs, return_dict=return_dict, **kwargs)
        # 1. The compiled IR for this signature (converted or read back on its first call).
        inputs = {k: v for k, v in tensors.items() if v is not None}
        request = self._request(inputs)
        # 2. Run it; the output is the torch UNet's, in the dtype its forward returns.
        out = request.infer([v.detach().float().contiguous().numpy() for v in inputs.values()])[0]
        self.used["openvino"] += 1
        sample_out = torch.from_numpy(out.copy()).to(sample.dtype)  # (B, C, H, W)
        if not return_dict:
            return (sample_out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=sample_out)

    # ---- conversion and compilation ------------------------------------------------------------

    def _key(self, signature: dict) -> str:
        import openvino

        params = list(self.torch_unet.parameters())
        sample = params[:: max(1, len(params) // 16)]  # a fingerprint of the weights, cheap to take
        with torch.no_grad():
            fingerprint = [round(float(p.double().sum()), 6) for p in sample]
        text = json.dumps([FORMAT_VERSION, self._ref, self._revision, self._precision, signature,
                           sum(p.numel() for p in params), fingerprint, openvino.__version__,
                           str(torch.__version__)])
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def _request(self, inputs: dict):
        signature = {k: list(v.shape) for k, v in inputs.items()}  # names and shapes, in call order
        name = json.dumps(signature)
        with self._lock:
            hit = self._compiled.get(name)
            if hit is not None:
                self._compiled.move_to_end(name)
                return hit
            request = self._compile(self._model_file(inputs, signature)).create_infer_request()
            self._compiled[name] = request
            while len(self._compiled) > COMPILED_KEPT:
                self._compiled.popitem(last=False)
            return request

    def _model_file(self, inputs: dict, signature: dict) -> Path:
        """The IR for ``signature``: from the cache, else converted now and saved there."""
        import openvino

        folder = Path(config.user_cache_dir()) / "openvino" / self._key(signature)
        xml = folder / "denoiser.xml"
        if xml.is_file() and (folder / "done.json").is_file():
            return xml
        t0 = time.perf_counter()
        names = tuple(inputs)
        example = tuple(v.detach().clone().float() for v in inputs.values())
        # From fp32 weights: OpenVINO picks its compute precision from the compile hint (step 2),
        # and a bf16 module converted as it is drew wrong images.
        source = copy.deepcopy(self.torch_unet)
        torch.nn.Module.to(source, dtype=torch.float32)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The trace fixes the shapes on purpose (one IR per signature): its warnings say so.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            ov_model = openvino.convert_model(_Positional(source, names), example_input=example)
        del source
        folder.mkdir(parents=True, exist_ok=True)
        openvino.save_model(ov_model, xml)
        seconds = time.perf_counter() - t0
        (folder / "done.json").write_text(json.dumps({"ref": self._ref, "signature": signature,
                                                      "precision": self._precision,
                                                      "convert_seconds": round(seconds, 1)}) + "\n")
        self.converted += 1
        logger.info("converted %s's UNet to OpenVINO at %s in %.1f s (%s)", self._ref, signature, seconds, folder)
        return xml

    def _compile(self, xml: Path):
        import openvino

        hint = "bf16" if self._precision == "bf16" else "f32"
        threads = self._threads or torch.get_num_threads()
        return openvino.Core().compile_model(str(xml), "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": str(threads),
            "PERFORMANCE_HINT": "LATENCY"})


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
