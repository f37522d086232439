"""Sampler choices, by short key, mapped to diffusers schedulers and to the names AUTOMATIC1111
writes in its ``parameters`` text (so files from both tools read the same)."""

from __future__ import annotations

# key: (diffusers class name, extra config, A1111 sampler name). Names, not classes: the app's
# server process lists and checks these without importing diffusers (and torch), which would add
# ~5 s to its start; only the engine builds schedulers.
SCHEDULERS: dict[str, tuple[str, dict, str]] = {
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "DPM++ 2M"),
    "dpm++2m-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
        "DPM++ 2M Karras",
    ),
    # The stochastic DPM-Solver++ (Lu et al. 2022): fresh noise each step, like Euler a.
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "lcm": ("LCMScheduler", {}, "LCM"),
}


# A1111 names of schedulers a model may ship with but vgen does not offer by key.
A1111_NAMES = {"PNDMScheduler": "PLMS", "LMSDiscreteScheduler": "LMS", "HeunDiscreteScheduler": "Heun"}


def make_scheduler(base_config, key: str | None):
    """A fresh scheduler (schedulers hold per-run state, so never share one between jobs):
    the model's own when ``key`` is None, else the named one built from the model's config."""
    import diffusers

    if key is None:
        return getattr(diffusers, base_config["_class_name"]).from_config(base_config)
    cls, extra, _ = SCHEDULERS[key]
    return getattr(diffusers, cls).from_config(base_config, **extra)


def sampler_name(scheduler) -> str:
    """The A1111 name of a scheduler instance (its class name when A1111 has none)."""
    cfg, own = scheduler.config, type(scheduler).__name__
    for cls, extra, name in SCHEDULERS.values():
        if own == cls and all(cfg.get(k) == v for k, v in extra.items()):
            if cls == "DPMSolverMultistepScheduler" and not extra.get("use_karras_sigmas") and cfg.get("use_karras_sigmas"):
                continue
            return name
    return A1111_NAMES.get(own, own)


def key_for_sampler(name: str) -> str | None:
    """Inverse of ``sampler_name`` for the samplers vgen offers."""
    for key, (_, _, a1111) in SCHEDULERS.items():
        if a1111 == name:
            return key
    return None
