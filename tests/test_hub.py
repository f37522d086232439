"""vgen.hub: model references (pure) and Hub resolution against a local olah mirror (see conftest.py)."""

from __future__ import annotations

import fnmatch
import io
import os
import socket
import time
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub import errors as hf_errors
from safetensors.torch import save as save_safetensors

from vgen import hub, hub_errors, hub_files
from vgen.errors import (
    CancelledError,
    GatedModelError,
    InvalidModelReferenceError,
    ModelNotFoundError,
    NetworkError,
    OfflineError,
    RevisionNotFoundError,
    UnsafeWeightsError,
    UnsupportedModelError,
)
from vgen.hub import ModelRef, is_cached, parse_reference, pipeline_allow_patterns, resolve

# --------------------------------------------------------------------------------------------------
# Repositories served by the local Hub
# --------------------------------------------------------------------------------------------------

PIPE = "vgen-test/tiny-pipe"
PICKLE_ONLY = "vgen-test/pickle-only"
NOT_A_MODEL = "vgen-test/not-a-model"
TAGGED = "vgen-test/tagged"


def _weights(dtype: torch.dtype, n: int = 64) -> bytes:
    return save_safetensors({"weight": torch.arange(n, dtype=torch.float32).to(dtype)})


def _pickle() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(8)}, buffer)
    return buffer.getvalue()


PIPE_FILES = {
    "model_index.json": '{"_class_name": "TinyPipeline", "unet": ["diffusers", "UNet2DModel"]}',
    "README.md": "# tiny\n",
    "pipeline.py": "raise SystemExit('remote code must never be downloaded')\n",
    "tiny_single_file.safetensors": _weights(torch.float32, 256),  # top-level single-file checkpoint
    "unet/config.json": '{"sample_size": 8}',
    "unet/diffusion_pytorch_model.safetensors": _weights(torch.float32, 64),
    "unet/diffusion_pytorch_model.fp16.safetensors": _weights(torch.float16, 64),
    "unet/diffusion_pytorch_model.non_ema.safetensors": _weights(torch.float32, 65),
    "unet/diffusion_pytorch_model.bin": _pickle(),
    "unet/diffusion_pytorch_model.ckpt": _pickle(),
    "text_encoder/config.json": '{"hidden_size": 8}',
    "text_encoder/model.safetensors": _weights(torch.float32, 32),  # no fp16 variant: diffusers falls back
    "text_encoder/flax_model.msgpack": b"\x80msgpack",
    "text_encoder/model.onnx": b"onnx",
    "tokenizer/vocab.json": '{"a": 0}',
    "tokenizer/merges.txt": "#version: 0.2\n",
    "tokenizer/nested/extra.json": "{}",  # two levels down: not part of a pipeline
}
COMMON = {"model_index.json", "README.md", "unet/config.json", "text_encoder/config.json", "tokenizer/vocab.json",
          "tokenizer/merges.txt", "text_encoder/model.safetensors"}
EXPECTED_PLAIN = COMMON | {"unet/diffusion_pytorch_model.safetensors"}
EXPECTED_FP16 = COMMON | {"unet/diffusion_pytorch_model.fp16.safetensors"}


@pytest.fixture(scope="module")
def repos(local_hub) -> dict[str, str]:
    """Commit hashes of the served repos (TAGGED maps "v1" and "main")."""
    v1 = local_hub.add_repo(TAGGED, {"config.json": '{"version": 1}', "model.safetensors": _weights(torch.float32)},
                            tag="v1")
    main = local_hub.add_repo(TAGGED, {"config.json": '{"version": 2}'}, message="v2")
    return {
        PIPE: local_hub.add_repo(PIPE, PIPE_FILES),
        PICKLE_ONLY: local_hub.add_repo(PICKLE_ONLY, {
            "model_index.json": "{}",
            "unet/config.json": "{}",
            "unet/diffusion_pytorch_model.bin": _pickle(),
            "text_encoder/pytorch_model.bin": _pickle(),
        }),
        NOT_A_MODEL: local_hub.add_repo(NOT_A_MODEL, {"README.md": "hello", "notes.txt": "x"}),
        "v1": v1,
        "main": main,
    }


def _dead_endpoint() -> str:
    """An endpoint on a loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------------
# parse_reference (pure)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private checkpoints/ (hub.CHECKPOINTS_DIR) and no VGEN_MODEL_ROOTS; cwd elsewhere."""
    checkpoints = tmp_path / "project" / "checkpoints"
    checkpoints.mkdir(parents=True)
    monkeypatch.setattr(hub, "CHECKPOINTS_DIR", checkpoints)
    monkeypatch.delenv("VGEN_MODEL_ROOTS", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return checkpoints


@pytest.mark.parametrize(
    ("text", "repo_id", "revision"),
    [
        ("org/name", "org/name", None),
        ("  org/name \n", "org/name", None),
        ("Org-1/my_model.v2", "Org-1/my_model.v2", None),
        ("org/name@v1.0", "org/name", "v1.0"),
        ("org/name@refs/pr/1", "org/name", "refs/pr/1"),
        ("org/name@" + "a" * 40, "org/name", "a" * 40),
    ],
)
def test_parse_hub_ids(roots, text, repo_id, revision):
    ref = parse_reference(text)
    assert ref == ModelRef(repo_id=repo_id, revision=revision, local_path=None)
    assert not ref.is_local
    assert parse_reference(str(ref)) == ref
    assert str(ref) == (f"{repo_id}@{revision}" if revision else repo_id)


def test_parse_folder_under_checkpoints(roots, tmp_path, monkeypatch):
    model = roots / "vgen-shapes"
    model.mkdir()
    expected = ModelRef(repo_id=None, revision=None, local_path=model.resolve())
    assert parse_reference("vgen-shapes") == expected
    assert parse_reference("checkpoints/vgen-shapes") == expected  # relative to the project root
    assert parse_reference(str(model)) == expected
    monkeypatch.chdir(roots.parent)
    assert parse_reference("./checkpoints/vgen-shapes") == expected  # relative to cwd
    assert parse_reference("checkpoints/vgen-shapes/../vgen-shapes") == expected
    assert expected.is_local and parse_reference(str(expected)) == expected


def test_parse_folder_under_model_roots(roots, tmp_path, monkeypatch):
    first, second = tmp_path / "roots-a", tmp_path / "roots-b"
    (second / "sd-tiny").mkdir(parents=True)
    first.mkdir()
    monkeypatch.setenv("VGEN_MODEL_ROOTS", os.pathsep.join([str(first), str(second), ""]))
    assert hub.allowed_local_roots() == [roots.resolve(), first.resolve(), second.resolve()]
    expected = ModelRef(local_path=(second / "sd-tiny").resolve())
    assert parse_reference(str(second / "sd-tiny")) == expected
    assert parse_reference("sd-tiny") == expected  # bare names are looked up in every allowed root
    monkeypatch.chdir(second)
    assert parse_reference("./sd-tiny") == expected


@pytest.mark.parametrize(
    "text",
    [
        "../etc", "/etc", "/etc/passwd", "a/b/c", "org/na me", "org/name@", "x\x00y", "org/name\x00",
        "~/.ssh", "~", "", "   ", "org/name\nother/repo", "org/name@bad rev", "org/name@../../x",
        "org/name@-rf", "org/name@a..b", "org--x/name", "org/.name", "-org/name", "org/" + "n" * 97,
        "org/name@" + "r" * 256, "not-a-checkpoint", "name@rev", "C:\\models\\x", "..\\x", "/",
        "checkpoints", "checkpoints/missing", ".",
    ],
)
def test_parse_rejections(roots, text):
    with pytest.raises(InvalidModelReferenceError) as info:
        parse_reference(text)
    message = str(info.value)
    assert "org/name" in message and "checkpoints/" in message, message  # says what is allowed


def test_parse_rejects_symlink_out_of_root(roots, tmp_path):
    outside = tmp_path / "outside-model"
    outside.mkdir()
    (outside / "model_index.json").write_text("{}")
    (roots / "evil").symlink_to(outside, target_is_directory=True)
    (roots / "inner").mkdir()
    for text in ("evil", "checkpoints/evil", str(roots / "evil"), str(roots / "inner" / ".." / ".." / ".." / "elsewhere")):
        with pytest.raises(InvalidModelReferenceError, match="outside|not an existing"):
            parse_reference(text)
    # A symlink that stays inside the root is fine.
    (roots / "alias").symlink_to(roots / "inner", target_is_directory=True)
    assert parse_reference("alias").local_path == (roots / "inner").resolve()


def test_hand_built_refs_are_revalidated(roots):
    with pytest.raises(InvalidModelReferenceError):
        ModelRef()
    with pytest.raises(InvalidModelReferenceError):
        ModelRef(repo_id="a/b", local_path=Path("/tmp"))
    with pytest.raises(InvalidModelReferenceError):
        resolve(ModelRef(repo_id="../../etc"))
    with pytest.raises(InvalidModelReferenceError):
        resolve(ModelRef(local_path=Path("/etc")))


# --------------------------------------------------------------------------------------------------
# pipeline_allow_patterns (pure)
# --------------------------------------------------------------------------------------------------

LISTING = [
    "model_index.json", "unet/config.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json",
    "tokenizer/merges.txt", "tokenizer/spiece.model", "tokenizer/tokenizer.json", "tokenizer/o200k.tiktoken",
    "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model.fp16-00001-of-00002.safetensors",
    "text_encoder/model.safetensors.index.json",
    "unet/diffusion_pytorch_model.bin", "unet/model.ckpt", "unet/w.pt", "unet/w.pth", "unet/w.pkl",
    "flax_model.msgpack", "unet/model.onnx", "tf_model.h5", "pipeline.py", "unet/modeling.py",
]


def _matching(patterns: list[str]) -> set[str]:
    return {p for p in LISTING if any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns)}


def test_allow_patterns_no_variant():
    got = _matching(pipeline_allow_patterns())
    assert got == {
        "model_index.json", "unet/config.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json",
        "tokenizer/merges.txt", "tokenizer/spiece.model", "tokenizer/tokenizer.json", "tokenizer/o200k.tiktoken",
        "text_encoder/model.safetensors.index.json",
        "unet/diffusion_pytorch_model.safetensors", "text_encoder/model-00001-of-00002.safetensors",
    }
    assert "model_index.json" in pipeline_allow_patterns()


def test_allow_patterns_fp16():
    got = _matching(pipeline_allow_patterns("fp16"))
    weights = {p for p in got if p.endswith(".safetensors")}
    assert weights == {"unet/diffusion_pytorch_model.fp16.safetensors",
                       "text_encoder/model.fp16-00001-of-00002.safetensors"}
    assert {"model_index.json", "unet/config.json", "tokenizer/merges.txt"} <= got
    assert not any(p.endswith((".bin", ".ckpt", ".pt", ".pth", ".pkl", ".msgpack", ".onnx", ".h5", ".py"))
                   for p in got)
    with pytest.raises(ValueError):
        pipeline_allow_patterns("bf16")


def test_fp16_only_component_forces_fp16_variant():
    paths = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
             "vae/diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
    assert hub_files.variant_candidates(paths, prefer_fp16=False) == ["fp16"]
    assert hub_files.select_files(paths, "fp16") == [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"]
    plain = [p for p in paths if "fp16" not in p]
    assert hub_files.variant_candidates(plain, prefer_fp16=True) == [None]


# --------------------------------------------------------------------------------------------------
# Local folders
# --------------------------------------------------------------------------------------------------


def test_resolve_local_folder(roots):
    model = roots / "vgen-shapes"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(_weights(torch.float32))
    (model / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(_weights(torch.float16))
    got = resolve("vgen-shapes")
    assert got.path == model.resolve() and got.commit == "local" and got.variant is None
    assert resolve("vgen-shapes", prefer_fp16=True).variant == "fp16"
    assert is_cached("vgen-shapes")

    (roots / "empty").mkdir()
    with pytest.raises(UnsupportedModelError, match="model_index.json"):
        resolve("empty")
    assert not is_cached("empty")

    pickled = roots / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(_pickle())
    with pytest.raises(UnsafeWeightsError, match="safetensors"):
        resolve("pickled")


# --------------------------------------------------------------------------------------------------
# Hub resolution against the local olah mirror
# --------------------------------------------------------------------------------------------------


def test_resolve_downloads_only_pipeline_files(local_hub_env, repos):
    events: list[hub.DownloadProgress] = []
    got = resolve(PIPE, progress=events.append)

    # The commit is the git commit olah serves, and the snapshot lives in HF_HUB_CACHE under it.
    assert got.commit == repos[PIPE]
    assert got.path.name == repos[PIPE] and got.path.is_relative_to(local_hub_env)
    assert got.ref == ModelRef(repo_id=PIPE) and got.variant is None
    assert _files(got.path) == EXPECTED_PLAIN
    # Nothing else reached the cache: no pickle, code, ONNX/Flax, fp16 or single-file checkpoint.
    cached_names = {p.name for p in local_hub_env.rglob("*")}
    assert not any(n.endswith((".bin", ".ckpt", ".py", ".onnx", ".msgpack")) for n in cached_names)
    assert "tiny_single_file.safetensors" not in cached_names
    assert len(list(local_hub_env.rglob("blobs/*"))) == len(EXPECTED_PLAIN)  # one blob per wanted file

    assert events, "progress callback never called"
    assert all(e.files_total == len(EXPECTED_PLAIN) for e in events)
    expected_bytes = sum(len(PIPE_FILES[p]) if isinstance(PIPE_FILES[p], bytes) else len(PIPE_FILES[p].encode())
                         for p in EXPECTED_PLAIN)
    assert all(e.bytes_total == expected_bytes for e in events)
    assert events[0].bytes_done == 0
    assert [e.bytes_done for e in events] == sorted(e.bytes_done for e in events)  # monotonic
    assert events[-1].bytes_done == expected_bytes > 0
    assert events[-1].files_done == events[-1].files_total >= 1


def test_prefer_fp16_fetches_fp16_weights_only(local_hub_env, repos):
    got = resolve(PIPE, prefer_fp16=True)
    assert got.variant == "fp16" and got.commit == repos[PIPE]
    # unet: fp16 only; text_encoder has no fp16 file, so its full-precision weights (as diffusers does).
    assert _files(got.path) == EXPECTED_FP16
    assert is_cached(PIPE)


def test_second_resolve_downloads_nothing(local_hub_env, repos, local_hub, monkeypatch):
    assert not is_cached(PIPE)
    first = resolve(PIPE)
    assert is_cached(PIPE)
    blobs = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (local_hub_env).rglob("blobs/*")}
    assert len(blobs) == len(EXPECTED_PLAIN)

    events: list[hub.DownloadProgress] = []
    second = resolve(PIPE, progress=events.append)
    assert second == first
    # bytes_done starts at the bytes already cached; a re-download would push it past bytes_total.
    assert events and all(e.bytes_done == e.bytes_total for e in events)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in local_hub_env.rglob("blobs/*")} == blobs

    # Offline, and with the Hub gone, the cached snapshot still resolves.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(PIPE) == first
    assert resolve(f"{PIPE}@{repos[PIPE]}").path == first.path
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", _dead_endpoint())
    assert resolve(PIPE) == first


def test_cache_location_follows_hf_home(local_hub_env, repos, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    got = resolve(PIPE)
    assert got.path.is_relative_to(tmp_path / "hf-home" / "hub") and got.commit == repos[PIPE]


def test_offline_cache_prefers_what_is_cached(local_hub_env, repos, monkeypatch):
    resolve(PIPE)  # full precision only
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = resolve(PIPE, prefer_fp16=True)  # fp16 not cached: fall back to what is
    assert got.variant is None and got.commit == repos[PIPE]


def test_unknown_repo(local_hub_env, repos):
    with pytest.raises(ModelNotFoundError) as info:
        resolve("vgen-test/does-not-exist", token="hf_NotARealSecretToken123")
    message = str(info.value)
    assert "vgen-test/does-not-exist" in message and "HF_TOKEN" in message
    assert "hf_NotARealSecretToken123" not in message


def test_pickle_only_repo_is_refused(local_hub_env, repos):
    with pytest.raises(UnsafeWeightsError) as info:
        resolve(PICKLE_ONLY)
    assert "safetensors" in str(info.value) and "pickle" in str(info.value)
    assert not list(local_hub_env.rglob("snapshots/*/*")), "nothing may be downloaded"


def test_repo_without_model_config_is_refused(local_hub_env, repos):
    with pytest.raises(UnsupportedModelError):
        resolve(NOT_A_MODEL)


def test_offline_and_not_cached(local_hub_env, repos, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        resolve(PIPE)
    assert "HF_HUB_CACHE" in str(info.value) and str(local_hub_env) in str(info.value)
    assert not is_cached(PIPE)


def test_unreachable_hub_and_not_cached(local_hub_env, monkeypatch):
    endpoint = _dead_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    start = time.monotonic()
    with pytest.raises(OfflineError, match=endpoint):
        resolve(PIPE)
    assert time.monotonic() - start < 20


def test_revisions(local_hub_env, repos):
    v1 = resolve(f"{TAGGED}@v1")
    assert v1.commit == repos["v1"] and (v1.path / "model.safetensors").is_file()
    main = resolve(TAGGED)
    assert main.commit == repos["main"] != repos["v1"]
    assert resolve(f"{TAGGED}@{repos['v1']}").path == v1.path
    # olah answers 401 "Repository not found" for an unknown revision of a mirrored repo.
    with pytest.raises(ModelNotFoundError, match="no-such-branch"):
        resolve(f"{TAGGED}@no-such-branch")


def _http_error(cls, status: int, url: str = "http://hub.test/api/models/org/name/revision/x"):
    response = httpx2.Response(status, request=httpx2.Request("GET", url))
    return cls(f"{status} Client Error", response=response)


def test_unknown_revision_maps_to_revision_not_found(local_hub_env, repos, monkeypatch):
    # The Hub answers 404 RevisionNotFound, which olah cannot express: raise it where resolve meets it.
    def fake_resolve_revision(self, repo_id, **kwargs):
        raise _http_error(hf_errors.RevisionNotFoundError, 404)

    monkeypatch.setattr(HfApi, "resolve_revision", fake_resolve_revision)
    with pytest.raises(RevisionNotFoundError, match="no-such-branch"):
        resolve(f"{TAGGED}@no-such-branch")


@pytest.mark.parametrize(
    ("error", "expected", "needles"),
    [
        (_http_error(hf_errors.GatedRepoError, 403), GatedModelError, ["HF_TOKEN", "accept"]),
        (_http_error(hf_errors.RepositoryNotFoundError, 401), ModelNotFoundError, ["org/name", "HF_TOKEN"]),
        (_http_error(hf_errors.RevisionNotFoundError, 404), RevisionNotFoundError, ["rev1"]),
        (_http_error(hf_errors.HfHubHTTPError, 503), NetworkError, ["503", "https://hub.test"]),
        (httpx2.ReadTimeout("timed out"), NetworkError, ["https://hub.test", "in time"]),
        (httpx2.ConnectError("refused"), OfflineError, ["https://hub.test", "HF_HUB_CACHE=/cache"]),
        (hf_errors.OfflineModeIsEnabled("offline"), OfflineError, ["HF_HUB_OFFLINE"]),
        (hf_errors.LocalEntryNotFoundError("not cached"), OfflineError, ["/cache"]),
    ],
)
def test_error_mapping(error, expected, needles):
    secret = "hf_SuperSecretTokenValue"
    mapped = hub_errors.map_hub_error(error, parse_reference("org/name@rev1"), endpoint="https://hub.test",
                                cache_dir="/cache", token=secret)
    assert isinstance(mapped, expected)
    for needle in needles:
        assert needle in str(mapped)
    assert secret not in str(mapped)


def test_endpoint_credentials_stay_out_of_messages():
    mapped = hub_errors.map_hub_error(httpx2.ConnectError("x"), parse_reference("org/name"),
                                endpoint="https://user:pw@mirror.test:8443", cache_dir="/c")
    assert "pw" not in str(mapped) and "https://mirror.test:8443" in str(mapped)


def test_progress_callback_can_cancel(local_hub_env, repos):
    def cancel_on_first_bytes(event: hub.DownloadProgress) -> None:
        if event.bytes_done > 0:
            raise CancelledError("stopped by user")

    with pytest.raises(CancelledError):
        resolve(PIPE, progress=cancel_on_first_bytes)
    assert not is_cached(PIPE)
    got = resolve(PIPE)  # an interrupted download is completed by the next resolve
    assert _files(got.path) == EXPECTED_PLAIN
