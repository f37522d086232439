"""Measuring for ``python -m vgen bench`` (``vgen.bench``): the machine's matmul peak, peak RSS,
UNet FLOPs, phase-timed runs, and the layout/compilation ablations."""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .speed import PhaseTimer, PhaseTimes


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> tuple[float, float]:
    """Best (wall, CPU-time) GFLOP/s of an n x n matrix product: what this machine's BLAS
    reaches in ``dtype`` with the current thread settings."""
    g = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    flops = 2 * n ** 3
    best_wall = best_cpu = float("inf")
    with torch.inference_mode():
        torch.mm(a, b)
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_cpu = min(best_cpu, max(time.process_time() - c0, 1e-9))
    return flops / best_wall / 1e9, flops / best_cpu / 1e9


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # a high-water mark


class RssSampler:
    """Samples this process's RSS every ``period`` s and keeps the peak per active label."""

    def __init__(self, period: float = 0.01):
        self.period = period
        self.label: str | None = None
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vgen-bench-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            label = self.label
            if label is not None:
                self.peaks[label] = max(self.peaks.get(label, 0.0), _rss_mb())

    @contextlib.contextmanager
    def measuring(self, label: str):
        self.label = label
        self.peaks[label] = max(self.peaks.get(label, 0.0), _rss_mb())
        try:
            yield
        finally:
            self.peaks[label] = max(self.peaks[label], _rss_mb())
            self.label = None

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _sdpa_cpu_mapping() -> dict:
    """FlopCounterMode has no formula for CPU flash attention; it is the same count as SDPA's."""
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    cpu = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    ref = flop_registry.get(aten._scaled_dot_product_flash_attention)
    ref = getattr(ref, "__wrapped__", ref)  # FlopCounterMode wraps custom formulas itself
    return {cpu: ref} if cpu is not None and ref is not None and cpu not in flop_registry else {}


@contextlib.contextmanager
def count_unet_flops(unet: torch.nn.Module, out: dict):
    """Counts the FLOPs of ``unet``'s forward calls made inside; ``out["per_sample"]`` is set
    on exit (FLOPs of one latent through the UNet once)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_mapping())
    state = {"flops": 0, "samples": 0, "before": 0}

    def pre(mod, args, kwargs):
        state["before"] = counter.get_total_flops()
        x = args[0] if args else kwargs.get("sample")
        state["samples"] += int(x.shape[0])

    def post(mod, args, kwargs, output):
        state["flops"] += counter.get_total_flops() - state["before"]

    handles = [unet.register_forward_pre_hook(pre, with_kwargs=True),
               unet.register_forward_hook(post, with_kwargs=True)]
    try:
        with counter:
            yield
    finally:
        for h in handles:
            h.remove()
        out["per_sample"] = state["flops"] / max(state["samples"], 1)


@dataclass
class Sample:
    wall: float
    cpu: float
    times: PhaseTimes
    image: Any


def timed(parts, device, call: Callable[[], Any]) -> Sample:
    """Run ``call`` with the phases of ``parts`` (an object with text_encoder/unet/vae) timed."""
    with PhaseTimer(parts, device) as pt:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        image = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Sample(wall, cpu, pt.times, image)


def median(values) -> float:
    return float(statistics.median(values))


def source_image(size: int):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill="red")
    return im


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB (99.0 when identical)."""
    import numpy as np

    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else round(10 * float(np.log10(255.0 ** 2 / mse)), 2)


def pixels_equal(a, b) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@contextlib.contextmanager
def capture_inputs(modules: dict[str, torch.nn.Module], out: dict):
    """Record the (args, kwargs) of each module's first forward call made inside."""
    handles = []
    for name, m in modules.items():
        def pre(mod, args, kwargs, name=name):
            out.setdefault(name, (args, kwargs))
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x


def _cpu_seconds(fn: Callable[[], Any]) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def ablations(modules: dict[str, torch.nn.Module], inputs: dict, repeats: int, compile_modules: tuple[str, ...],
              used_by_vgen: set[str], log: Callable[[str], None]) -> dict:
    """Layout and compilation, measured on the model's own modules and inputs (CPU seconds,
    medians, interleaved): the module as loaded (contiguous) against channels-last (what the
    engine uses for decoders on a CPU), and ``torch.compile`` (inductor, not used by the engine)
    for ``compile_modules``, with the CPU time of its first, compiling call. A module the engine
    already keeps in channels-last is measured on a contiguous copy."""
    from torch.utils._pytree import tree_map

    out = {}
    with torch.inference_mode():
        for name, m in modules.items():
            if name not in inputs:
                continue
            used = name in used_by_vgen
            if not all(p.is_contiguous() for p in m.parameters()):
                m = copy.deepcopy(m).to(memory_format=torch.contiguous_format)
            args, kwargs = inputs[name]
            cl_args, cl_kwargs = tree_map(_channels_last, args), tree_map(_channels_last, kwargs)
            base, cl = [], []
            m(*args, **kwargs)
            for _ in range(repeats):
                base.append(_cpu_seconds(lambda: m(*args, **kwargs)))
                m.to(memory_format=torch.channels_last)
                try:
                    cl.append(_cpu_seconds(lambda: m(*cl_args, **cl_kwargs)))
                finally:
                    m.to(memory_format=torch.contiguous_format)
            out[f"channels_last/{name}"] = {"cpu_seconds": round(median(base), 4),
                                            "with_cpu_seconds": round(median(cl), 4),
                                            "speedup": round(median(base) / median(cl), 3),
                                            "used_by_vgen": used}
            log(f"  ablation channels-last {name}: {median(base):.3f} -> {median(cl):.3f} CPU s")
            if name in compile_modules:
                try:
                    compiled = torch.compile(m)
                    first = _cpu_seconds(lambda: compiled(*args, **kwargs))
                    comp = [_cpu_seconds(lambda: compiled(*args, **kwargs)) for _ in range(repeats)]
                except Exception as e:  # no compiler, unsupported op, ...: say so
                    out[f"torch_compile/{name}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                    continue
                out[f"torch_compile/{name}"] = {"cpu_seconds": round(median(base), 4),
                                                "with_cpu_seconds": round(median(comp), 4),
                                                "speedup": round(median(base) / median(comp), 3),
                                                "first_call_cpu_seconds": round(first, 1),
                                                "used_by_vgen": False}
                log(f"  ablation torch.compile {name}: {median(base):.3f} -> {median(comp):.3f} CPU s "
                    f"after a first call of {first:.0f} CPU s")
    return out

