"""OpenVINO IRs of one torch module, one per input signature: converted once, kept on disk,
compiled at vgen's precision. The stand-ins of ``vgen.openvino_backend`` run their calls on them.

1. **Convert once, at the call's shapes.** The first call of a new input signature (the names
   and shapes of the tensors, plus what the caller asks back) converts the torch module's
   weights, as loaded, in fp32 with ``openvino.convert_model`` (its PyTorch frontend) into an IR
   saved under ``<user cache>/openvino/<key>/<role>.xml`` (``key``: the role, the model, its
   revision, a fingerprint of the weights, the signature, the precision, the versions). Later
   processes read the IR back (seconds) instead of converting (a minute for SD's UNet).
   ``done.json`` beside it marks a finished save; a folder without one is converted again.
2. **Compile at static shapes, with vgen's precision.** The converter leaves the batch and
   spatial dimensions dynamic, so each IR is reshaped to its signature's shapes before it is
   compiled, as FastSD CPU and optimum-intel's ``reshape`` do (a dynamic UNet ran slower: the
   README's figures). ``INFERENCE_PRECISION_HINT`` is ``bf16`` where
   ``vgen.precision`` chose bf16 for the model and ``f32`` otherwise, so a model's precision
   means the same under both backends; ``INFERENCE_NUM_THREADS`` is the model's job threads,
   and its threads are not pinned to cores. The last ``COMPILED_KEPT`` compiled signatures stay
   in memory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

from . import config

logger = logging.getLogger("vgen.openvino")

COMPILED_KEPT = 4  # compiled signatures kept per module (sizes, guidance on or off)
FORMAT_VERSION = 2  # bump when the conversion changes: older IRs are converted again
INT8_SUFFIX, INT8_DONE = "-int8", "int8.json"  # vgen.openvino_int8's IR beside the converted one
KEPT_BYTES = 8 * 2**30  # IRs kept on disk, most recently used first (each holds all weights of its module)


def ir_root() -> Path:
    return Path(config.user_cache_dir()) / "openvino"


class IRCache:
    """The compiled IRs of ``module`` (a role: ``denoiser``, ``text_encoder``, ``decoder``).

    ``request(inputs, traced)`` gives an infer request for ``inputs`` (name -> tensor, in the
    order the IR takes them); ``traced(fp32_copy)`` is the torch module to convert, taking those
    tensors positionally and returning a tensor or a flat tuple of tensors."""

    def __init__(self, module: torch.nn.Module, role: str, ref: str, revision: str, precision: str,
                 threads: int | None):
        self.module, self.role = module, role
        self._ref, self._revision, self._precision, self._threads = ref, revision, precision, threads
        self._compiled: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.converted = 0  # conversions this process made (not read back from the cache)
        self.use_int8: bool | None = None  # None: VGEN_OPENVINO_INT8; vgen.openvino_int8 calibrates on False

    @staticmethod
    def signature(inputs: dict[str, torch.Tensor], variant: str = "") -> dict:
        """Names and shapes of ``inputs``, in call order (plus ``variant``): what fixes an IR."""
        signature = {k: list(v.shape) for k, v in inputs.items()}
        if variant:
            signature["variant"] = variant
        return signature

    def folder(self, signature: dict) -> Path:
        return ir_root() / self._key(signature)

    def request(self, inputs: dict[str, torch.Tensor], traced: Callable[[torch.nn.Module], torch.nn.Module],
                variant: str = "") -> tuple[object, bool]:
        """An infer request for ``inputs`` and whether it runs the int8 IR (:meth:`_int8_file`).
        ``variant`` names what else fixes the IR besides the inputs (e.g. which outputs)."""
        signature = self.signature(inputs, variant)
        int8 = self.use_int8 if self.use_int8 is not None else config.openvino_int8()
        name = json.dumps([signature, int8])
        with self._lock:
            hit = self._compiled.get(name)
            if hit is not None:
                self._compiled.move_to_end(name)
                return hit
            xml = self._model_file(inputs, signature, traced)
            quantized = self._int8_file(xml) if int8 else None
            hit = (self._compile(quantized or xml, signature).create_infer_request(), quantized is not None)
            self._compiled[name] = hit
            while len(self._compiled) > COMPILED_KEPT:
                self._compiled.popitem(last=False)
            return hit

    def forget_compiled(self) -> None:
        """Compile again on the next calls (after :mod:`vgen.openvino_int8` saved an int8 IR)."""
        with self._lock:
            self._compiled.clear()

    @staticmethod
    def _int8_file(xml: Path) -> Path | None:
        """The int8 IR beside ``xml`` that ``python -m vgen quantize`` made, if it finished."""
        int8 = xml.with_name(xml.stem + INT8_SUFFIX + ".xml")
        return int8 if int8.is_file() and (xml.parent / INT8_DONE).is_file() else None

    def _key(self, signature: dict) -> str:
        import openvino

        params = list(self.module.parameters())
        sample = params[:: max(1, len(params) // 16)]  # a fingerprint of the weights, cheap to take
        with torch.no_grad():
            fingerprint = [round(float(p.double().sum()), 6) for p in sample]
        text = json.dumps([FORMAT_VERSION, self.role, self._ref, self._revision, self._precision, signature,
                           sum(p.numel() for p in params), fingerprint, openvino.__version__,
                           str(torch.__version__)])
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def _model_file(self, inputs: dict, signature: dict, traced: Callable) -> Path:
        """The IR for ``signature``: from the cache, else converted now and saved there."""
        import openvino

        folder = self.folder(signature)
        xml = folder / f"{self.role}.xml"
        done = folder / "done.json"
        if xml.is_file() and done.is_file():
            done.touch()  # most recently used: what prune_irs keeps
            return xml
        t0 = time.perf_counter()
        example = tuple(v.detach().clone() if not v.is_floating_point() else v.detach().clone().float()
                        for v in inputs.values())
        # From fp32 weights: OpenVINO picks its compute precision from the compile hint (step 2),
        # and a bf16 module converted as it is drew wrong images.
        source = copy.deepcopy(self.module)
        torch.nn.Module.to(source, dtype=torch.float32)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The trace fixes the shapes on purpose (one IR per signature): its warnings say so;
            # the converter's own use of torch.jit.trace and of deprecated names warns too.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            ov_model = openvino.convert_model(traced(source), example_input=example)
        del source
        folder.mkdir(parents=True, exist_ok=True)
        # fp16 weights on disk (half the size) only where the IR computes in bf16 anyway.
        openvino.save_model(ov_model, xml, compress_to_fp16=self._precision == "bf16")
        seconds = time.perf_counter() - t0
        done.write_text(json.dumps({"ref": self._ref, "role": self.role, "signature": signature,
                                    "precision": self._precision, "convert_seconds": round(seconds, 1)}) + "\n")
        self.converted += 1
        logger.info("converted %s's %s to OpenVINO at %s in %.1f s (%s)", self._ref, self.role, signature,
                    seconds, folder)
        prune_irs(spare=folder)
        return xml

    def _compile(self, xml: Path, signature: dict):
        import openvino

        core = openvino.Core()
        model = core.read_model(str(xml))
        # The inputs are in call order, as the signature's shapes (its "variant" is no input).
        shapes = [shape for name, shape in signature.items() if name != "variant"]
        model.reshape({port: openvino.PartialShape(shape) for port, shape in zip(model.inputs, shapes)})
        hint = "bf16" if self._precision == "bf16" else "f32"
        threads = self._threads or torch.get_num_threads()
        # No pinning: a thread pinned to a core another process keeps busy waits for that core,
        # where the OS would move an unpinned one to a free core (vgen bench --busy-core).
        return core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": str(threads),
            "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})


def prune_irs(budget: int = KEPT_BYTES, spare: Path | None = None) -> list[Path]:
    """Delete the least recently used IR folders under :func:`ir_root` until the rest fit in
    ``budget`` bytes, and unfinished ones (no ``done.json``) once an hour old; ``spare`` (the
    one just saved) is never deleted. Returns the folders deleted. A process that compiled an
    IR no longer needs its files."""
    root = ir_root()
    if not root.is_dir():
        return []
    now = time.time()
    finished, removed = [], []
    for folder in (p for p in root.iterdir() if p.is_dir()):
        done = folder / "done.json"
        if done.is_file():
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            finished.append((folder == spare, done.stat().st_mtime, size, folder))
        elif folder != spare and now - folder.stat().st_mtime > 3600:
            removed.append(folder)
    used = 0
    for is_spare, _, size, folder in sorted(finished, reverse=True):  # the spare, then newest first
        used += size
        if used > budget and not is_spare:
            removed.append(folder)
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed
