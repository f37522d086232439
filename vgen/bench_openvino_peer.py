"""The ``openvino-fast`` peer of ``python -m vgen bench`` (issue #23 item 3): FastSD CPU's recipe,
timed in the OpenVINO environment of ``vgen.bench_openvino``.

Run as a script by that environment's Python (``python bench_openvino_peer.py IN.json OUT.json``),
never imported by vgen: optimum-intel 2.2.0 pins ``huggingface_hub<1.22`` and ``transformers<5.6``,
which vgen's own environment cannot have, so this file imports nothing of vgen and only the
standard library, torch, diffusers and optimum-intel.

What it does, on the bench's local random-weight pipeline folder:

1. Export (once per export folder; reused when ``export.json`` is there):
   ``OVStableDiffusionPipeline.from_pretrained(model, export=True, compile=False)`` (optimum-intel's
   default weight format for a model of this size, no quantization asked for), saved with
   ``save_pretrained``; then TAESD's decoder (the bench's ``AutoencoderTiny`` folder) converted with
   ``openvino.convert_model`` into ``vae_decoder_taesd/``, input ``latent_sample`` and output
   ``sample`` as optimum-intel names the VAE decoder's, beside its ``config.json``. FastSD CPU swaps
   in an OpenVINO IR of TAESD's decoder the same way (an ``OVModelVaeDecoder`` on that IR replacing
   the pipeline's ``vae_decoder``); it downloads a ready IR, which the Hub being out of reach rules
   out here, so the IR is made from the same weights the ``vgen-fast`` variant decodes with.
2. Load the IR, swap in the TAESD decoder, ``reshape(batch_size=1, height=size, width=size,
   num_images_per_prompt=1)`` (static shapes) and ``compile()`` on ``CPU`` with optimum-intel's
   ov_config plus ``INFERENCE_NUM_THREADS`` set to the bench's thread count. optimum-intel's
   reshape gives the UNet a batch of 2 (it assumes classifier-free guidance); with guidance <= 1
   diffusers' pipeline calls it with 1, so the UNet's inputs are then reshaped to batch 1.
   Inference precision: the CPU plugin's default on this machine, reported as
   ``inference_precision``, unless the job names one (``precision``: ``INFERENCE_PRECISION_HINT``,
   the bench's ``--openvino-precision``, to tell the runtime's share from the precision's).
3. One warm-up call, then ``prompts`` one each: wall and CPU seconds (``time.process_time``
   counts OpenVINO's threads: they are this process's), the text encoder / UNet / decoder split
   (the parts' ``forward`` wrapped), peak RSS sampled from ``/proc/self/statm`` every 10 ms.

Writes ``{"samples": [...], "export_seconds", "compile_seconds", "versions", "inference_precision",
"ov_config", "unet_samples_per_image"}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

TAESD_PART = "vae_decoder_taesd"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRss:
    """Peak RSS while inside, sampled every ``period`` s (as ``vgen.bench_measure.RssSampler``)."""

    def __init__(self, period: float = 0.01):
        self.period, self.peak = period, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> "_PeakRss":
        self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def export(model_dir: str, taesd_dir: str, out: Path) -> float:
    """Step 1: the OpenVINO IR of the pipeline and of TAESD's decoder under ``out``; returns
    the seconds it took (0 when ``out`` already holds a finished export)."""
    if (out / "export.json").is_file():
        return 0.0
    import openvino as ov
    import torch
    from diffusers import AutoencoderTiny
    from optimum.intel import OVStableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(model_dir, export=True, compile=False,
                                                     local_files_only=True)
    pipe.save_pretrained(out)
    del pipe
    taesd = AutoencoderTiny.from_pretrained(taesd_dir).eval()
    channels = taesd.config.latent_channels
    with torch.no_grad():
        ir = ov.convert_model(taesd.decoder, example_input=torch.zeros(1, channels, 8, 8),
                              input=[ov.PartialShape([-1, channels, -1, -1])])
    ir.inputs[0].get_tensor().set_names({"latent_sample"})
    ir.outputs[0].get_tensor().set_names({"sample"})
    (out / TAESD_PART).mkdir(parents=True, exist_ok=True)
    ov.save_model(ir, out / TAESD_PART / "openvino_model.xml")
    taesd.save_config(out / TAESD_PART)
    seconds = time.perf_counter() - t0
    (out / "export.json").write_text(json.dumps({"model": model_dir, "taesd": taesd_dir,
                                                 "seconds": round(seconds, 1)}))
    return seconds


def _unet_batch(model, batch: int) -> None:
    """The UNet's batched inputs (all but ``timestep``) reshaped to ``batch`` samples."""
    shapes = {}
    for inp in model.inputs:
        ps = inp.get_partial_shape()
        if inp.get_any_name() != "timestep" and ps.rank.get_length() > 0:
            ps[0] = batch
        shapes[inp] = ps
    model.reshape(shapes)


def load(out: Path, size: int, guidance: float, threads: int, precision: str | None = None):
    """Step 2: the exported pipeline with TAESD's decoder, static shapes, compiled."""
    import openvino as ov
    from optimum.intel import OVStableDiffusionPipeline
    from optimum.intel.openvino.modeling_diffusion import OVModelVae, OVModelVaeDecoder

    ov_config = {"INFERENCE_NUM_THREADS": threads}
    if precision:
        ov_config["INFERENCE_PRECISION_HINT"] = precision
    pipe = OVStableDiffusionPipeline.from_pretrained(out, compile=False, local_files_only=True, ov_config=ov_config)
    pipe.vae_decoder = OVModelVaeDecoder(ov.Core().read_model(out / TAESD_PART / "openvino_model.xml"),
                                         pipe, TAESD_PART)
    pipe.vae = OVModelVae(decoder=pipe.vae_decoder, encoder=pipe.vae_encoder)
    pipe.reshape(batch_size=1, height=size, width=size, num_images_per_prompt=1)
    if guidance <= 1:
        _unet_batch(pipe.unet.model, 1)
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _phase_timers(pipe) -> dict:
    """Wrap the parts' ``forward`` (their ``__call__`` calls it) to add wall/CPU seconds per phase."""
    acc: dict = {}
    for phase, part in (("text", pipe.text_encoder), ("unet", pipe.unet), ("decode", pipe.vae_decoder)):
        inner = part.forward

        def forward(*args, _inner=inner, _phase=phase, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return _inner(*args, **kwargs)
            finally:
                a = acc.setdefault(_phase, [0.0, 0.0, 0])
                a[0] += time.perf_counter() - t0
                a[1] += time.process_time() - c0
                a[2] += 1
        part.forward = forward
    return acc


def time_runs(pipe, job: dict) -> list[dict]:
    """Step 3: a warm-up call, then one timed call per prompt of ``job["prompts"]``."""
    import torch

    acc = _phase_timers(pipe)

    def call(prompt: str):
        return pipe(prompt=prompt, num_inference_steps=job["steps"], guidance_scale=job["guidance"],
                    height=job["size"], width=job["size"],
                    generator=torch.Generator("cpu").manual_seed(job["seed"])).images[0]

    call(job["warm_up_prompt"])
    samples = []
    for prompt in job["prompts"]:
        acc.clear()
        with _PeakRss() as rss:
            t0, c0 = time.perf_counter(), time.process_time()
            image = call(prompt)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        phases = {k: {"seconds": v[0], "cpu_seconds": v[1], "calls": v[2]} for k, v in acc.items()}
        samples.append({"wall": wall, "cpu": cpu, "peak_rss_mb": rss.peak, "phases": phases,
                        "image_size": list(image.size)})
    return samples


def _versions() -> dict:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("optimum-intel", "optimum", "openvino", "nncf", "diffusers",
                                                "transformers", "huggingface_hub", "torch")}


def run(job: dict) -> dict:
    """Steps 1-3 for ``job`` (the JSON the bench writes: model, taesd, export_dir, size, steps,
    guidance, seed, threads, warm_up_prompt, prompts; precision, optional)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only local folders: the Hub is not asked
    out = Path(job["export_dir"])
    export_s = export(job["model"], job["taesd"], out)
    t0 = time.perf_counter()
    pipe = load(out, job["size"], job["guidance"], job["threads"], job.get("precision"))
    compile_s = time.perf_counter() - t0
    hint = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT")
    precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    samples = time_runs(pipe, job)
    return {"samples": samples, "export_seconds": round(export_s, 1), "compile_seconds": round(compile_s, 1),
            "versions": _versions(), "inference_precision": precision,
            "ov_config": {k: str(v) for k, v in pipe.ov_config.items()},
            "unet_samples_per_image": 1 if job["guidance"] <= 1 else 2}


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    try:
        result = run(job)
    except Exception as e:  # reported to the bench, which records it as the run's error
        result = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-4000:]}
    Path(argv[2]).write_text(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
