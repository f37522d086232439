"""``python -m vgen quantize``: int8 denoiser IRs for ``VGEN_BACKEND=openvino``, made with NNCF's
post-training quantization (``nncf.quantize``, the 8-bit weights and activations that
optimum-intel's hybrid quantization gives SD's UNet), calibrated on the model's own calls.

1. **Calibrate on real calls.** The engine runs one job per calibration prompt at the size,
   guidance and steps asked for, on the converted (bf16/fp32) IRs, and the denoiser's stand-in
   records the inputs of every call: latents, timesteps and prompt embeddings as the model's own
   scheduler and text encoder make them.
2. **Quantize each recorded signature** from its converted IR, with those inputs as the
   calibration set (``model_type=TRANSFORMER``, smooth quant off), and save it beside that IR
   as ``denoiser-int8.xml`` with ``int8.json``.
3. **Opt in**: with ``VGEN_OPENVINO_INT8=1`` a denoiser call whose signature has an int8 IR
   runs it (``extras["openvino_parts"]`` says "denoiser (int8)", the PNG ``Quantized``); other
   calls run the converted IR as before. Lower precision is a choice the README's figures
   (bench PSNR, eval scores) back, so it is not the default.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .errors import ModelError
from .openvino_ir import INT8_DONE, INT8_SUFFIX

# Varied subjects, so the calibration sees a spread of prompt embeddings.
CALIBRATION_PROMPTS = (
    "a photo of a cat", "a red car on a street", "a bowl of fruit", "a mountain lake at dawn",
    "a city at night", "portrait of an old man", "a dog in the snow", "a castle on a hill",
    "a plate of pasta", "a forest path", "a yellow flower", "a sailing boat", "a busy market",
    "a robot in a lab", "a beach with palm trees", "a snowy owl",
)
MAX_CALIBRATION_CALLS = 300


def _nncf():
    try:
        import nncf
    except ImportError as e:
        raise ModelError("int8 quantization needs the nncf package (pip install nncf)") from e
    return nncf


def quantize(req, prompts: tuple[str, ...] = CALIBRATION_PROMPTS, force: bool = False,
             log: Callable[[str], None] = print, cache=None) -> list[Path]:
    """Int8 IRs for the denoiser signatures that ``req`` (a GenerateRequest: model, size,
    guidance, steps, decoder) makes, calibrated on ``prompts``; returns their folders. A
    signature that has one already is left alone unless ``force``."""
    import openvino

    from . import openvino_backend
    from .generate import generate
    from .pipelines import ModelCache

    nncf = _nncf()
    if openvino_backend.backend() != "openvino":
        raise ModelError("python -m vgen quantize makes IRs for the OpenVINO backend: run it with VGEN_BACKEND=openvino")
    # 1. Calibrate: one job per prompt on the converted IRs (converted in the first job where
    #    missing), recording the denoiser's inputs.
    cache = cache or ModelCache(max_models=1)
    model = cache.get(req.model)  # the jobs below find it loaded, with this stand-in
    stand_in = openvino_backend.denoiser_for(model)
    if stand_in is None:
        raise ModelError(f"{model.ref} has no UNet for the OpenVINO backend to run")
    ir = stand_in._ir
    ir.use_int8, stand_in.recording = False, []
    try:
        for i, prompt in enumerate(prompts):
            generate(replace(req, prompt=prompt, seed=i), cache=cache)
        recorded = stand_in.recording
    finally:
        ir.use_int8, stand_in.recording = None, None
        ir.forget_compiled()
    by_signature: dict[str, tuple[dict, list]] = {}
    for signature, arrays in recorded:
        by_signature.setdefault(json.dumps(signature), (signature, []))[1].append(arrays)
    # 2. Quantize each signature from its converted IR.
    done = []
    for signature, calls in by_signature.values():
        folder = ir.folder(signature)
        target = folder / f"{ir.role}{INT8_SUFFIX}.xml"
        if (folder / INT8_DONE).is_file() and target.is_file() and not force:
            log(f"{model.ref}: int8 IR for {signature} already there ({folder})")
            done.append(folder)
            continue
        t0 = time.perf_counter()
        calls = calls[:MAX_CALIBRATION_CALLS]
        ov_model = openvino.Core().read_model(str(folder / f"{ir.role}.xml"))
        smooth = nncf.AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)
        quantized = nncf.quantize(ov_model, nncf.Dataset(calls), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(calls),
                                  advanced_parameters=nncf.AdvancedQuantizationParameters(smooth_quant_alphas=smooth))
        openvino.save_model(quantized, str(target), compress_to_fp16=False)
        seconds = time.perf_counter() - t0
        (folder / INT8_DONE).write_text(json.dumps({"ref": model.ref, "signature": signature, "calls": len(calls),
                                                    "prompts": len(prompts), "nncf": nncf.__version__,
                                                    "quantize_seconds": round(seconds, 1)}) + "\n")
        log(f"{model.ref}: int8 IR for {signature} from {len(calls)} calls in {seconds:.1f} s ({folder})")
        done.append(folder)
    return done
