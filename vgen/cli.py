"""Command line: ``python -m vgen {generate,edit,info,attention,features,train,eval,compare,bench} ...``.

Bad input exits with status 2 and one line on stderr; the engine's own errors carry the
message (what was wrong, what is allowed).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .errors import VgenError


# ---- shared option groups -----------------------------------------------------------------

def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x512, got {text!r}") from None
    return w, h


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="Hub repo id[@revision] or local folder "
                   "(default: VGEN_DEFAULT_MODEL or the embedded vgen-shapes)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="-1 or omitted: draw one")
    p.add_argument("--size", type=_size, default=None, metavar="WxH")
    p.add_argument("--num", type=int, default=1, help="images per prompt (seeds seed, seed+1, ...)")
    p.add_argument("--scheduler", default=None, help="dpm++2m, euler, euler-a, ddim, unipc, lcm, ...")
    p.add_argument("--decoder", default="full", help="full (the model's VAE) or fast (tiny "
                   "autoencoder TAESD from the Hub, for Stable Diffusion / SDXL latents)")


def _request_kwargs(a: argparse.Namespace) -> dict:
    w, h = a.size if a.size else (None, None)
    return dict(negative_prompt=a.negative, model=a.model, steps=a.steps, guidance=a.guidance,
                seed=a.seed, width=w, height=h, num_images=a.num, scheduler=a.scheduler,
                decoder=getattr(a, "decoder", "full"))


class _Bars:
    """tqdm bars for downloads and denoising steps, as a JobControl."""

    def __init__(self):
        from tqdm.auto import tqdm

        self._tqdm, self._steps, self._dl = tqdm, None, None
        self._share = None  # a vgen.cpu_share.CpuShare, from the first job's control on

    def progress(self, step: int, total: int) -> None:
        if self._steps is None or step == 1:
            if self._steps is not None:
                self._steps.close()
            self._steps = self._tqdm(total=total, desc="denoising", unit="step", leave=False)
        self._steps.update(step - self._steps.n)

    def download(self, p) -> None:
        if self._dl is None:
            self._dl = self._tqdm(total=p.bytes_total, desc="downloading", unit="B",
                                  unit_scale=True, leave=False)
        self._dl.set_postfix_str(f"{p.files_done}/{p.files_total} files")
        self._dl.update(p.bytes_done - self._dl.n)

    def control(self):
        from .cpu_share import CpuShare
        from .jobs import JobControl

        if self._share is None:
            self._share = CpuShare()
        return JobControl(progress=self.progress, download=self.download, adapt=self._share.adjust)

    def close(self) -> None:
        for bar in (self._steps, self._dl):
            if bar is not None:
                bar.close()
        self._steps = self._dl = None


def _numbered(out: Path, i: int, n: int) -> Path:
    return out if n == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")


def _warn_notes(result) -> None:
    for key in ("negative_note", "backend_note"):
        if result.extras.get(key):
            print(f"note: {result.extras[key]}", file=sys.stderr)
    unknown = result.extras.get("unknown_words")
    if unknown:
        msg = f"warning: {result.model} does not know the words: {', '.join(unknown)}"
        if result.extras.get("known_words"):
            msg += f"\n  it knows: {' '.join(result.extras['known_words'])}"
        print(msg, file=sys.stderr)


# ---- commands -----------------------------------------------------------------------------

def cmd_generate(a: argparse.Namespace) -> int:
    from .generate import generate
    from .metadata import save_png
    from .requests import GenerateRequest

    if (a.prompt is None) == (a.prompts_file is None):
        raise VgenError("give either a PROMPT or --prompts-file FILE")
    bars = _Bars()
    if a.prompts_file:
        if not a.out_dir:
            raise VgenError("--prompts-file needs --out-dir DIR")
        from .batch import generate_file

        if a.expand or a.layout:
            raise VgenError("--expand and --layout work with one PROMPT, not with --prompts-file")
        from .batch import read_prompts, split_for_processes

        # Under `accelerate launch`, each process generates its share of the prompts (same
        # file names as one process would write); alone, all of them.
        indices, state = split_for_processes(len(read_prompts(Path(a.prompts_file))))
        written = generate_file(Path(a.prompts_file), Path(a.out_dir),
                                GenerateRequest(prompt="", **_request_kwargs(a)), indices=indices,
                                plan=a.plan, planner=a.planner)
        who = f"process {state.process_index + 1}/{state.num_processes}: " if state.num_processes > 1 else ""
        print(f"{who}wrote {len(written)} images to {a.out_dir}")
        return 0
    if not a.out:
        raise VgenError("give --out FILE.png")
    req = GenerateRequest(prompt=a.prompt, **_request_kwargs(a))
    if a.expand:  # a language model writes the prompt first; the PNG records how
        from .expand_cli import expand_first

        req = expand_first(a, req)
    from .plan_cli import apply_layout

    req = apply_layout(a, req)  # --plan / --layout: objects in boxes, for a GLIGEN model
    try:
        result = generate(req, control=bars.control())
    finally:
        bars.close()
    _warn_notes(result)
    out = Path(a.out)
    for i, im in enumerate(result.images):
        path = save_png(im, _numbered(out, i, len(result.images)))
        print(f"{path}  seed {result.seeds[i]}")
    return 0


def cmd_edit(a: argparse.Namespace) -> int:
    from .edit import edit
    from .images import load_image
    from .metadata import save_png
    from .requests import EditRequest

    image = load_image(a.image)
    mask = load_image(a.mask, kind="mask") if a.mask else None
    req = EditRequest(prompt=a.instruction, image=image, mask=mask, mode=a.mode,
                      strength=a.strength, image_guidance=a.image_guidance, **_request_kwargs(a))
    bars = _Bars()
    try:
        result = edit(req, control=bars.control())
    finally:
        bars.close()
    _warn_notes(result)
    out = Path(a.out)
    for i, im in enumerate(result.images):
        path = save_png(im, _numbered(out, i, len(result.images)))
        print(f"{path}  seed {result.seeds[i]}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .images import open_image
    from .metadata import read_parameters

    image = open_image(a.file)
    if "vgen-compare" in image.info and "parameters" not in image.info:  # a compare grid
        print(image.info["vgen-compare"])
        return 0
    print(read_parameters(image))
    return 0


def cmd_attention(a: argparse.Namespace) -> int:
    """image.png, maps.npz, one overlay per token, grid.png (and path.png with --path)."""
    from .attention import inspect_generation
    from .attention_maps import safe_name
    from .viz import filmstrip
    from .images import load_image
    from .metadata import save_png
    from .requests import EditRequest, GenerateRequest

    kw = dict(prompt=a.prompt, **_request_kwargs(a))
    if a.image:
        mask = load_image(a.mask, kind="mask") if a.mask else None
        req = EditRequest(image=load_image(a.image), mask=mask, mode=a.mode, strength=a.strength, **kw)
    else:
        req = GenerateRequest(**kw)
    bars = _Bars()
    try:
        out = inspect_generation(req, control=bars.control(), path=a.path)
    finally:
        bars.close()
    _warn_notes(out.result)
    d = Path(a.out)
    d.mkdir(parents=True, exist_ok=True)
    image, maps = out.result.images[0], out.maps
    save_png(image, d / "image.png")
    maps.save_npz(d / "maps.npz", include_special=a.include_special)
    for key in maps.keys(a.include_special):
        maps.overlay(image, key, a.opacity).save(d / f"overlay-{safe_name(key)}.png")
    maps.grid(image, opacity=a.opacity).save(d / "grid.png")
    if out.path:
        filmstrip(out.path[0]).save(d / "path.png")
    print(f"{d}: image.png, maps.npz ({len(maps.keys(a.include_special))} maps: "
          f"{' '.join(maps.keys(a.include_special))}), overlays, grid.png{', path.png' if out.path else ''}"
          f"  seed {out.result.seeds[0]}")
    return 0


def cmd_features(a: argparse.Namespace) -> int:
    from .features import extract
    from .images import load_image

    kw: dict = {"vgg16": dict(weights=a.weights, size=a.size), "vae": dict(model=a.model),
                "unet": dict(model=a.model, prompt=a.prompt, timestep=a.timestep, seed=a.seed)}.get(a.backbone, {})
    fm = extract(load_image(a.image), a.backbone, **kw)
    written = fm.save(a.out, k=a.top)
    print(f"{a.out}: {len(written)} images; layers: "
          + ", ".join(f"{n} {tuple(t.shape)}" for n, t in fm.layers.items()))
    return 0


def _run_overrides(a: argparse.Namespace) -> dict:
    """The shapes and edit trainers' --device, --workers, --batch, --lr and --minutes, where given."""
    given = {"device": a.device, "workers": a.workers, "batch": a.batch, "lr": a.lr,
             "minutes": a.minutes}
    return {k: v for k, v in given.items() if v is not None}


def cmd_train(a: argparse.Namespace) -> int:
    if a.what == "shapes":
        from .shapes.model import ModelConfig
        from .shapes.train import TrainConfig, train_shapes

        cfg = TrainConfig()
        cfg = replace(cfg, out=a.out or cfg.out, steps=a.steps or cfg.steps,
                      state_dir=a.state_dir or cfg.state_dir,
                      vae_steps=a.vae_steps if a.vae_steps is not None else cfg.vae_steps,
                      decay_start=a.decay_start)
        if a.tiny:
            cfg = replace(cfg, model=ModelConfig.tiny(), batch=4, vae_batch=4, save_every=max(1, cfg.steps // 2),
                          log_every=1)
        cfg = replace(cfg, **_run_overrides(a))
        train_shapes(cfg, resume=a.resume, log=lambda m: print(m, flush=True),
                     reset_optimizer=a.reset_optimizer)
        return 0
    if a.what == "lm":
        from .shapes.lm import LMTrainConfig, train_lm

        cfg = LMTrainConfig()
        cfg = replace(cfg, out=a.out or cfg.out, steps=a.steps or cfg.steps)
        if a.tiny:
            cfg = replace(cfg, n_embd=32, n_layer=1, n_head=2, batch=8, log_every=1,
                          save_every=max(1, cfg.steps // 2))
        train_lm(cfg, resume=a.resume, log=lambda m: print(m, flush=True))
        return 0
    if a.what == "edit":
        from .shapes.train_edit import EditTrainConfig, train_edit

        cfg = EditTrainConfig()
        cfg = replace(cfg, init=a.init or cfg.init, out=a.out or cfg.out,
                      steps=a.steps or cfg.steps, state_dir=a.state_dir or cfg.state_dir,
                      decay_start=a.decay_start)
        if a.tiny:
            cfg = replace(cfg, batch=4, save_every=max(1, cfg.steps // 2), log_every=1)
        cfg = replace(cfg, **_run_overrides(a))
        train_edit(cfg, resume=a.resume, log=lambda m: print(m, flush=True),
                   reset_optimizer=a.reset_optimizer)
        return 0
    if a.what == "plan":  # prompt -> plan -> grounded image, end to end
        from .shapes.evaluate_plan import main as plan_eval_main

        return plan_eval_main(a)
    if a.what == "distilled":  # issue #23: the fast embedded model
        from .shapes.train_distilled import DistillConfig, train_distilled

        cfg = DistillConfig()
        cfg = replace(cfg, init=a.init or cfg.init, out=a.out or cfg.out, steps=a.steps or cfg.steps,
                      state_dir=a.state_dir or cfg.state_dir, decay_start=a.decay_start,
                      student_steps=a.student_steps or cfg.student_steps)
        if a.tiny:
            cfg = replace(cfg, batch=2, save_every=max(1, cfg.steps // 2), log_every=1)
        train_distilled(replace(cfg, **_run_overrides(a)), resume=a.resume, log=lambda m: print(m, flush=True))
        return 0
    if a.what in ("grounded", "planner"):  # issue #22: vgen/shapes/grounded_cli.py
        from .shapes.grounded_cli import train as grounded_train

        return grounded_train(a, _run_overrides(a))
    raise VgenError(f"unknown training target {a.what!r}; known: shapes, lm, edit, grounded, planner, distilled")


def cmd_eval(a: argparse.Namespace) -> int:
    if a.what == "shapes":
        from .shapes.evaluate import main as eval_main

        return eval_main(a)
    if a.what == "attention":
        from .attention_eval import main as attention_main

        return attention_main(a)
    if a.what == "edit":
        from .shapes.evaluate_edit import main as edit_eval_main

        return edit_eval_main(a)
    if a.what == "lm":
        from .shapes.lm_eval import main as lm_eval_main

        return lm_eval_main(a)
    if a.what == "plan":  # prompt -> plan -> grounded image, end to end
        from .shapes.evaluate_plan import main as plan_eval_main

        return plan_eval_main(a)
    if a.what in ("grounded", "planner"):  # issue #22: vgen/shapes/grounded_cli.py
        from .shapes.grounded_cli import evaluate as grounded_eval

        return grounded_eval(a)
    raise VgenError(f"unknown evaluation {a.what!r}; known: shapes, attention, edit, lm, grounded, planner, plan")


def cmd_compare(a: argparse.Namespace) -> int:
    """One prompt and seed across an x (and y) axis of settings: grid PNG, optional ZIP."""
    from .compare import CompareRequest, parse_axis
    from .compare_run import compare
    from .compare_grid import save_grid, save_zip, summary_text
    from .requests import GenerateRequest

    w, h = a.size if a.size else (None, None)
    base = GenerateRequest(prompt=a.prompt or "", negative_prompt=a.negative, model=a.model,
                           steps=a.steps, guidance=a.guidance, seed=a.seed, width=w, height=h,
                           scheduler=a.scheduler)
    req = CompareRequest(base, parse_axis(a.x), parse_axis(a.y) if a.y else None, lm=a.lm)
    bars = _Bars()
    try:
        result = compare(req, control=bars.control())
    finally:
        bars.close()
    print(f"{save_grid(result, a.out)}  seed {result.request.base.seed}")
    if a.zip:
        print(save_zip(result, a.zip))
    print(summary_text(result))
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(a)


def cmd_quantize(a: argparse.Namespace) -> int:
    from .openvino_int8 import quantize
    from .requests import GenerateRequest

    folders = quantize(GenerateRequest(prompt="", **_request_kwargs(a)), force=a.force)
    print(f"{len(folders)} int8 IR(s); run with VGEN_BACKEND=openvino VGEN_OPENVINO_INT8=1 to use them")
    return 0


def _add_quantize_parser(sub) -> None:
    q = sub.add_parser("quantize", help="VGEN_BACKEND=openvino: int8 denoiser IRs for a model at a size "
                       "(NNCF, calibrated on the model's own calls), used under VGEN_OPENVINO_INT8=1")
    _add_common(q)
    q.add_argument("--force", action="store_true", help="quantize again where an int8 IR exists")
    q.set_defaults(func=cmd_quantize)


def _add_generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="text to image")
    g.add_argument("prompt", nargs="?")
    g.add_argument("--prompts-file", default=None, help="one prompt a line")
    g.add_argument("--out", default=None, help="FILE.png (with --num N: FILE-0.png, FILE-1.png, ...)")
    g.add_argument("--out-dir", default=None, help="with --prompts-file: DIR/0000.png, ...")
    _add_common(g)
    g.add_argument("--expand", action="store_true",
                   help="expand the prompt with a language model first (see `expand`)")
    from .expand_cli import add_lm_options

    add_lm_options(g)
    from .plan_cli import add_layout_options

    add_layout_options(g)
    g.set_defaults(func=cmd_generate)


def _add_edit_parser(sub) -> None:
    e = sub.add_parser("edit", help="edit an image")
    e.add_argument("image")
    e.add_argument("instruction")
    e.add_argument("--mode", default="img2img", help="img2img | instruct | inpaint")
    e.add_argument("--mask", default=None, help="mask image, white = repaint (inpaint)")
    e.add_argument("--strength", type=float, default=0.75)
    e.add_argument("--image-guidance", type=float, default=None,
                   help="instruct: how closely to keep the source (default: the model's)")
    e.add_argument("--out", required=True)
    _add_common(e)
    e.set_defaults(func=cmd_edit)


def _add_info_parser(sub) -> None:
    i = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    i.add_argument("file")
    i.set_defaults(func=cmd_info)


def _add_attention_parser(sub) -> None:
    at = sub.add_parser("attention", help="generate (or edit) and write per-token cross-attention maps")
    at.add_argument("prompt")
    at.add_argument("--out", required=True, help="DIR: image.png, maps.npz, overlay-*.png, grid.png")
    at.add_argument("--image", default=None, help="edit this image instead of generating")
    at.add_argument("--mode", default="img2img", help="with --image: img2img | instruct | inpaint")
    at.add_argument("--mask", default=None, help="with --mode inpaint: white = repaint")
    at.add_argument("--strength", type=float, default=0.75)
    at.add_argument("--opacity", type=float, default=0.6)
    at.add_argument("--include-special", action="store_true", help="also the start/end/padding maps")
    at.add_argument("--path", action="store_true", help="also write the denoising path (path.png)")
    _add_common(at)
    at.set_defaults(func=cmd_attention)


def _add_features_parser(sub) -> None:
    f = sub.add_parser("features", help="feature maps of an image (PCA view and strongest channels)")
    f.add_argument("image")
    f.add_argument("--backbone", default="vgg16", choices=("vgg16", "unet", "vae"))
    f.add_argument("--out", required=True, help="DIR for the PNGs")
    f.add_argument("--model", default=None, help="unet/vae: the generator (default: the default model)")
    f.add_argument("--weights", default=None, help="vgg16: Hub id or folder (default timm/vgg16.tv_in1k)")
    f.add_argument("--size", type=int, default=224, help="vgg16: shorter side of the input")
    f.add_argument("--prompt", default="", help="unet: text condition")
    f.add_argument("--timestep", type=int, default=200, help="unet: noise level (0-999)")
    f.add_argument("--seed", type=int, default=0, help="unet: noise seed")
    f.add_argument("--top", type=int, default=16, help="channels in each grid")
    f.set_defaults(func=cmd_features)


def _add_train_parser(sub) -> None:
    t = sub.add_parser("train", help="train an embedded model")
    t.add_argument("what", help="shapes | lm (the prompt-expansion language model) | edit "
                   "(the instruction editor)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--vae-steps", type=int, default=None)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--reset-optimizer", action="store_true",
                   help="with --resume: keep the weights, start a fresh optimizer (after a loss change)")
    t.add_argument("--decay-start", type=int, default=None,
                   help="shapes/edit: cosine learning-rate decay from this step to --steps")
    t.add_argument("--out", default=None)
    t.add_argument("--state-dir", default=None)
    t.add_argument("--tiny", action="store_true", help="tiny config for smoke tests")
    t.add_argument("--init", default=None,
                   help="edit: the text-to-image model to start from (default checkpoints/vgen-shapes)")
    t.add_argument("--device", default=None,
                   help="shapes/edit: auto (default: CUDA when present, with bf16 autocast), cpu, cuda")
    t.add_argument("--workers", type=int, default=None,
                   help="shapes/edit: processes making batches (default 0: this one, exactly resumable)")
    t.add_argument("--batch", type=int, default=None, help="shapes/edit: examples per step (default 32)")
    t.add_argument("--lr", type=float, default=None, help="shapes/edit: peak learning rate")
    t.add_argument("--student-steps", type=int, default=None,
                   help="distilled: the student's DDIM steps, half the teacher's (default 10)")
    t.add_argument("--minutes", type=float, default=None,
                   help="shapes/edit: stop after this many minutes; --steps then becomes the step "
                        "the measured pace reaches, so the --decay-start cosine ends on time")
    t.set_defaults(func=cmd_train)


def _add_eval_parser(sub) -> None:
    v = sub.add_parser("eval", help="score a model: shapes benchmark, or attention localization")
    v.add_argument("what", help="shapes | attention | edit | lm (prompt expansion)")
    v.add_argument("--model", default=None)
    v.add_argument("--n", type=int, default=None, help="prompts per category (attention: prompts)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--steps", type=int, default=None)
    v.add_argument("--guidance", type=float, default=None)
    v.add_argument("--image-guidance", type=float, default=None, help="edit: image guidance scale")
    v.add_argument("--layout-guidance", type=float, default=None, help="plan: layout guidance step size")
    v.add_argument("--scheduler", default=None)
    v.add_argument("--json", default=None)
    v.add_argument("--save-dir", default=None, help="also write every generated image here")
    v.add_argument("--update-card", action="store_true",
                   help="store the report as eval.json in the (local) model folder and re-render its card")
    v.add_argument("--lm", default=None, help="lm: the language model (default vgen-shapes-lm)")
    v.add_argument("--temperature", type=float, default=None, help="lm: sampling temperature")
    v.add_argument("--render", type=int, default=None,
                   help="lm: expanded/full prompt pairs drawn by the image model (--model) and scored (40)")
    v.set_defaults(func=cmd_eval)


def _add_compare_parser(sub) -> None:
    c = sub.add_parser("compare", help="one prompt and seed across models/settings: a labelled grid")
    c.add_argument("prompt", nargs="?", default="", help="base prompt (optional with --x prompt=A|B)")
    c.add_argument("--x", required=True, metavar="PARAM=V1,V2,...",
                   help="columns: model, guidance, steps, scheduler, size (WxH), negative_prompt "
                   "prompt (text values separated by |), expand (on,off) or plan (on,off: a "
                   "planned layout drawn on vgen-shapes-grounded), e.g. guidance=1,3,7")
    c.add_argument("--y", default=None, metavar="PARAM=V1,V2,...", help="rows, as --x")
    c.add_argument("--out", required=True, help="grid PNG (labels drawn in, comparison in its metadata)")
    c.add_argument("--zip", default=None, help="also a ZIP of the cells, each with its parameters")
    c.add_argument("--model", default=None, help="base model (default: VGEN_DEFAULT_MODEL or vgen-shapes)")
    c.add_argument("--negative", default="", help="base negative prompt")
    c.add_argument("--steps", type=int, default=None)
    c.add_argument("--guidance", type=float, default=None)
    c.add_argument("--seed", type=int, default=None, help="one seed for every cell; -1 or omitted: draw one")
    c.add_argument("--size", type=_size, default=None, metavar="WxH")
    c.add_argument("--scheduler", default=None)
    c.add_argument("--lm", default=None, help="with an expand axis: the language model "
                   "(default: VGEN_DEFAULT_LM or the embedded vgen-shapes-lm)")
    c.set_defaults(func=cmd_compare)


def _add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="time generation: stock diffusers vs the vgen engine and its fast decoder")
    b.add_argument("--suite", default="quick", choices=("tiny", "quick", "full"),
                   help="tiny: test configs, seconds; quick: SD-Turbo 512 + the embedded model; "
                   "full: also SD 1.5, SDXL-Turbo, InstructPix2Pix (long on a CPU)")
    b.add_argument("--json", default=None, help="write the results here")
    b.add_argument("--repeats", type=int, default=3, help="timed runs per variant after a warm-up (>= 3)")
    b.add_argument("--work", default=None, help="folder for the built models, kept and reused "
                   "(default: a temporary folder, removed)")
    b.add_argument("--models", nargs="*", default=None,
                   help="only these of the suite: sd-turbo vgen-shapes vgen-shapes-distilled sd15 sdxl-turbo instruct-pix2pix "
                   "tiny-sd tiny-sdxl-turbo tiny-instruct-pix2pix")
    b.add_argument("--max-steps", type=int, default=None,
                   help="at most this many denoising steps for the published architectures (a shorter "
                   "full suite on a CPU; their figures are then for that many steps)")
    b.add_argument("--no-app", action="store_true", help="skip the app overhead and cold start")
    b.add_argument("--busy-core", action="store_true", help="also time the embedded model with one core "
                   "taken by a CPU-bound process against idle, under each thread policy: adaptive (VGEN_ADAPT_THREADS=1), "
                   "passive (OMP_WAIT_POLICY=PASSIVE, the default) and fixed (all cores, OpenMP's default wait)")
    b.add_argument("--ablations", action="store_true", help="also measure, per module, the channels-last "
                   "layout against the contiguous one, and torch.compile of the tiny decoder (slow to compile)")
    b.add_argument("--no-openvino", action="store_true", help="skip the openvino-fast peer (FastSD CPU's "
                   "recipe through optimum-intel, in an environment of its own that pip creates on first use "
                   "under the user cache, ~/.cache/vgen/openvino-env)")
    from .bench_openvino import PRECISIONS

    b.add_argument("--openvino-precision", default=None, choices=PRECISIONS,
                   help="openvino-fast in this inference precision (default: OpenVINO's for this CPU)")
    b.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m vgen", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    _add_generate_parser(sub)
    _add_edit_parser(sub)
    _add_info_parser(sub)
    _add_attention_parser(sub)
    _add_features_parser(sub)
    _add_train_parser(sub)
    _add_eval_parser(sub)
    from .expand_cli import add_expand_parser

    add_expand_parser(sub)
    from .plan_cli import add_plan_parser

    add_plan_parser(sub)
    _add_compare_parser(sub)
    _add_bench_parser(sub)
    _add_quantize_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (VgenError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
