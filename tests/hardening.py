"""Attack battery and load test against a running vgen app, on loopback only.

    python tests/hardening.py attack --url http://127.0.0.1:7860/ [--token-canary TEXT] [--json F]
    python tests/hardening.py load --url http://127.0.0.1:7860/ --users 16 --requests 5 [--json F]
    python tests/hardening.py load --url http://127.0.0.1:7860/ --flood [--flood-jobs 50] [--json F]

``attack`` sends more than 60 hostile requests: out-of-range and wrong-type API arguments,
oversized and malformed uploads, decompression bombs, path traversal and absolute paths on the
file routes in several encodings, hostile model references, hostile editor payloads. Each case
says what the server answered and whether that was a clear error (or, for odd-but-valid input, a
correct result); after each case a normal generation must still work. Canary files are planted
outside the served folders (a fresh temporary folder, next to Gradio's upload folder, inside the
project) and every byte that comes back is searched for them, for ``/etc/passwd`` and for the
token canary (start the app with ``HF_TOKEN`` set to it to check the token is never echoed).
Every endpoint (/generate, /edit, /attention, /compare, /expand, /status) gets out-of-range,
wrong-type and raw-JSON (NaN, deep nesting) arguments, on each route Gradio serves it on
(gradio_client, queue/join, /call/<api>; /run/<api>, which would run a queued handler outside
the queue, must answer 404); a refusal at the join (HTTP 422 in Gradio's validation format) is
read as gradio_client shows it (its ValidationError's text); with the app's MCP server on
(``GRADIO_MCP_SERVER=True``) the MCP route (``/gradio_api/mcp/``) gets hostile tool calls (bad
arguments, server paths and SSRF URLs as files, data: URLs of bombs) and hostile JSON-RPC bodies.
On those routes, where Gradio answers before any handler runs, a case passes when the answer is
not a 5xx and carries no traceback.

``load`` runs ``--users`` gradio_client users at once, each making ``--requests`` generations
with its own seeds; every image must carry its own prompt and seed in its ``parameters`` text.
It reports completed / rejected-busy / failed counts, cross-user results, p50/p95 latency and
the server's resident memory before (after a warm-up request) and after. ``load --flood``
is the fairness case: one client (one session) submits 50 jobs at once, then another client one;
it reports how many of the flooder's jobs finished before the other one started and how many were
refused at once as session-busy, and passes when that other user waited for at most two.

Both need the app on this machine (canaries, the server's memory); both refuse non-loopback URLs.
The functions ``run_attack``, ``run_load`` and ``run_flood`` are what tests/test_hardening.py
calls.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import secrets
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

REPO = Path(__file__).resolve().parent.parent
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
HEALTH_PROMPT = "a red circle to the left of a blue square"
LOAD_PROMPTS = (
    "a red circle to the left of a blue square",
    "two yellow triangles and a green square",
    "a large blue circle at the top",
    "a small green triangle below a red circle",
    "three pink squares",
    "a yellow circle and a blue triangle",
)
BUSY_PATTERN = re.compile(r"queue is full|server is busy", re.I)
# What a non-answer from Gradio looks like: it says nothing about what was wrong.
UNCLEAR = re.compile(r"has not enabled verbose error reporting|^error$|internal server error", re.I)


def _loopback(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS:
        raise SystemExit(f"refusing {url!r}: only http://127.0.0.1 (loopback) apps are tested")
    base = f"http://{parts.hostname}:{parts.port or 80}/"
    return base, parts.hostname, parts.port or 80


def _no_proxy() -> None:
    for name in ("NO_PROXY", "no_proxy"):
        os.environ[name] = "127.0.0.1,localhost,::1"


# ----------------------------------------------------------------------------------------------
# Raw HTTP: paths go out byte for byte (httpx would normalise "../" and re-encode)
# ----------------------------------------------------------------------------------------------


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes
    note: str = ""

    def summary(self) -> str:
        text = self.body[:160].decode("utf-8", "replace").replace("\n", " ")
        return f"HTTP {self.status} {text}{' ' + self.note if self.note else ''}".strip()


def raw_request(host: str, port: int, method: str, target: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, chunked: bool = False,
                timeout: float = 30.0, max_bytes: int = 8 << 20) -> Raw:
    """One HTTP/1.1 request on a fresh connection; the answer read until the server closes."""
    head = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
            "User-Agent: vgen-hardening", "Accept-Encoding: identity"]
    for key, value in (headers or {}).items():
        head.append(f"{key}: {value}")
    payload = b""
    if body is not None:
        if chunked:
            head.append("Transfer-Encoding: chunked")
            step = 1 << 16
            payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                               for i in range(0, len(body), step)) + b"0\r\n\r\n"
        else:
            head.append(f"Content-Length: {len(body)}")
            payload = body
    data, note = b"", ""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + payload)
        except OSError as e:  # the server answered (413) and closed while we were sending
            note = f"(send stopped: {type(e).__name__})"
        try:
            while len(data) < max_bytes and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            note = note or f"(read stopped: {type(e).__name__})"
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/\d\.\d (\d{3})", lines[0] if lines else "")
    if not match:
        return Raw(0, {}, data, note or "(no HTTP answer)")
    fields = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    if fields.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    return Raw(int(match.group(1)), fields, rest, note)


def _dechunk(data: bytes) -> bytes:
    out, i = b"", 0
    while i < len(data):
        end = data.find(b"\r\n", i)
        if end < 0:
            break
        try:
            size = int(data[i:end].split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[end + 2:end + 2 + size]
        i = end + 2 + size + 2
    return out


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None,
              field_name: str = "files") -> tuple[bytes, str]:
    boundary = "vgen" + secrets.token_hex(12)
    parts = []
    for key, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for name, content in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
                     f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode("utf-8", "surrogateescape") + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# ----------------------------------------------------------------------------------------------
# Test images, made in memory
# ----------------------------------------------------------------------------------------------


def _encode(image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int) -> bytes:
    """A real, decodable 1-bit PNG of side x side pixels that is only a few KB (all zero)."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    rows_per_block = max(1, (1 << 20) // len(row))
    idat = b""
    for start in range(0, side, rows_per_block):
        idat += packer.compress(row * min(rows_per_block, side - start))
    idat += packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def jpeg_header_bomb() -> bytes:
    """A small JPEG whose frame header claims 65500 x 65500 pixels."""
    from PIL import Image

    data = bytearray(_encode(Image.new("RGB", (64, 64), "red"), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 65500, 65500)
    return bytes(data)


def gif_header_bomb() -> bytes:
    from PIL import Image

    data = bytearray(_encode(Image.new("P", (8, 8)), "GIF"))
    struct.pack_into("<HH", data, 6, 65535, 65535)  # logical screen
    desc = data.find(b"\x2c", 13)
    struct.pack_into("<HH", data, desc + 5, 65535, 65535)  # image descriptor
    return bytes(data)


def sample_files() -> dict[str, bytes]:
    from PIL import Image, ImageDraw

    ok = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(ok).rectangle([16, 16, 47, 47], fill="red")
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:], duration=100,
                   loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse([8, 8, 56, 56], fill=(0, 0, 255, 255))
    palette = Image.new("P", (64, 64), 3)
    palette.info["transparency"] = 3
    mask = Image.new("L", (48, 32), 0)
    ImageDraw.Draw(mask).rectangle([10, 8, 30, 24], fill=255)
    png = _encode(ok)
    return {
        "ok.png": png,
        "notes.txt": b"this is not an image\n",
        "empty.png": b"",
        "truncated.png": png[: len(png) // 3],
        "html.png": b"<html><script>alert(document.cookie)</script></html>",
        "bomb-20000.png": png_bomb(20000),  # 400 M pixels
        "bomb-12000.png": png_bomb(12000),  # 144 M: under PIL's own hard limit, over the cap
        "bomb-header.jpg": jpeg_header_bomb(),
        "bomb-header.gif": gif_header_bomb(),
        "image.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                     b'<rect width="64" height="64" fill="red"/></svg>',
        "image.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
                     b"newpath 0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n",
        "image.pdf": b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
        "image.ico": _encode(ok, "ICO"),
        "image.psd.png": b"8BPS\x00\x01" + b"\x00" * 64,
        "animated.gif": anim.getvalue(),
        "cmyk.jpg": _encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"),
        "gray16.png": _encode(Image.new("I;16", (64, 64), 40000)),
        "exif-rotated.jpg": _encode(Image.new("RGB", (64, 64), "blue"), "JPEG",
                                    exif=exif.tobytes()),
        "rgba.png": _encode(rgba),
        "la.png": _encode(Image.new("LA", (64, 64), (128, 200))),
        "palette.png": _encode(palette),
        "gray.png": _encode(Image.new("L", (64, 64), 90)),
        "mask-other-size.png": _encode(mask),
        "wide.png": _encode(Image.new("RGB", (96, 64), "green")),
    }


# ----------------------------------------------------------------------------------------------
# The attack battery
# ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    passed: bool  # a clear error, or a correct result, as the case expects
    answer: str  # what the server said, shortened
    seen: bytes = b""  # every byte that came back, searched for canaries


@dataclass
class CaseReport:
    name: str
    group: str
    passed: bool
    answer: str
    healthy: bool
    health: str
    leaked: list[str]
    seconds: float


@dataclass
class Case:
    name: str
    group: str
    run: Callable[["Ctx"], Outcome]


@dataclass
class Ctx:
    url: str
    host: str
    port: int
    work: Path
    files: dict[str, Path]
    markers: dict[str, bytes]
    targets: dict[str, Path]
    client: Any = None
    http: Any = None
    api: str = ""  # e.g. http://127.0.0.1:7860/gradio_api
    prefix: str = "/gradio_api"
    upload_dir: Path | None = None
    config: dict = field(default_factory=dict)
    health_full: bool = True
    health_seed: int = 4242
    planted: Path | None = None  # hostile model folders inside an allowed root
    info: dict = field(default_factory=dict)  # /gradio_api/info: each endpoint's parameters
    mcp_tools: dict[str, str] | None = None  # api name -> MCP tool name; None: MCP not served

    # -- helpers used by the cases ------------------------------------------------------------

    def get(self, target: str, **kw) -> Raw:
        return raw_request(self.host, self.port, "GET", target, **kw)

    def post(self, target: str, body: bytes, content_type: str, **kw) -> Raw:
        headers = {"Content-Type": content_type, **kw.pop("headers", {})}
        return raw_request(self.host, self.port, "POST", target, body=body, headers=headers, **kw)

    def upload(self, name: str, content: bytes) -> str:
        body, ctype = multipart([(name, content)])
        answer = self.post(f"{self.prefix}/upload", body, ctype)
        if answer.status != 200:
            raise RuntimeError(f"upload of {name} failed: {answer.summary()}")
        return json.loads(answer.body)[0]

    def file_data(self, name: str) -> dict:
        path = self.upload(name, self.files[name].read_bytes())
        return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def fn_index(self, api_name: str) -> int:
        for dep in self.config.get("dependencies", []):
            if dep.get("api_name") == api_name:
                return dep["id"]
        raise KeyError(api_name)

    def queue(self, fn: str | int, data: list, *,
              raw_body: Callable[[str], bytes] | None = None,
              timeout: float = 120.0) -> tuple[str, Any, bytes]:
        """Join the queue as the browser does; ('completed', output | error text, bytes seen)
        or ('http', 'HTTP nnn ...', bytes)."""
        session = uuid.uuid4().hex
        fn_index = fn if isinstance(fn, int) else self.fn_index(fn)
        body = raw_body(session) if raw_body is not None else json.dumps(
            {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
             "trigger_id": None}).encode()
        joined = self.post(f"{self.prefix}/queue/join", body, "application/json")
        refusal = validation_message(joined)
        if refusal is not None:  # refused at the join: what gradio_client's ValidationError says
            return "error", refusal, joined.body
        if joined.status != 200:
            return "http", joined.summary(), joined.body
        seen = joined.body
        deadline = time.monotonic() + timeout
        with self.http.stream("GET", f"{self.api}/queue/data", params={"session_hash": session},
                              timeout=timeout) as stream:
            for line in stream.iter_lines():
                seen += line.encode()
                if time.monotonic() > deadline:
                    return "timeout", "no answer in time", seen
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    if message.get("success"):
                        return "completed", output.get("data"), seen
                    return "error", str(output.get("error") or output), seen
                if message.get("msg") in ("unexpected_error", "close_stream"):
                    return "error", str(message.get("message") or message), seen
        return "error", "the stream ended without an answer", seen

    def data(self, api_name: str, **values) -> list:
        """The endpoint's inputs in order: its defaults (text for a required text input),
        ``values`` (by parameter name) instead; a ``RawJSON`` value goes out unquoted."""
        params = self.info["named_endpoints"]["/" + api_name.lstrip("/")]["parameters"]
        out = []
        for p in params:
            name = p["parameter_name"]
            if name in values:
                out.append(values[name])
            elif p.get("parameter_has_default"):
                out.append(p.get("parameter_default"))
            else:
                out.append("a red circle" if p.get("type", {}).get("type") == "string" else None)
        return out

    def mcp(self, method: str, params: dict | None = None, *, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[Raw, Any]:
        """One JSON-RPC request to the MCP route (streamable HTTP, as an MCP client sends it);
        the raw answer and the JSON-RPC message in it (from its SSE ``data:`` line or its JSON
        body; None when there is none)."""
        if body is None:
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                               "params": params or {}}).encode()
        head = {"Accept": "application/json, text/event-stream", **(headers or {})}
        answer = self.post(f"{self.prefix}/mcp/", body, "application/json", headers=head,
                           timeout=timeout)
        return answer, _jsonrpc_message(answer.body)

    def mcp_tool(self, api_name: str) -> str:
        return (self.mcp_tools or {}).get("/" + api_name.lstrip("/"), api_name.lstrip("/"))


class RawJSON(str):
    """A value that ``raw_json`` writes as is (NaN, Infinity, 1e999, deep nesting)."""


def raw_json(value: Any) -> str:
    """json.dumps, except that RawJSON values go out byte for byte."""
    if isinstance(value, RawJSON):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {raw_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(raw_json(v) for v in value) + "]"
    return json.dumps(value)


def validation_message(answer: Raw) -> str | None:
    """A 422 in Gradio's validation format (one entry per input) as gradio_client words it
    (its ``ValidationError``), else None."""
    if answer.status != 422:
        return None
    try:
        detail = json.loads(answer.body).get("detail")
    except (ValueError, AttributeError):
        return None
    if not isinstance(detail, list):
        return None
    bad = [f"- {d.get('parameter_name')}: {d.get('message', '')}" for d in detail
           if isinstance(d, dict) and d.get("__type__") == "validate" and d.get("is_valid") is False]
    return "\n".join([f"{len(bad)} parameter(s) failed validation:", *bad]) if bad else None


def _jsonrpc_message(body: bytes) -> Any:
    text = body.decode("utf-8", "replace")
    messages = []
    for line in text.splitlines():
        if line.startswith("data:"):
            with contextlib.suppress(ValueError):
                messages.append(json.loads(line[5:]))
    for message in messages:  # the answer, after any progress notifications
        if isinstance(message, dict) and ("result" in message or "error" in message):
            return message
    if messages:
        return messages[-1]
    with contextlib.suppress(ValueError):
        return json.loads(text)
    return None


def _app_error_text(error: BaseException) -> str:
    return str(error).strip()


def api_case(name: str, group: str, api: str, args: tuple, kwargs: dict, *,
             error: str | None = None, check: Callable[[Any], str | None] | None = None) -> Case:
    """Call a named endpoint with gradio_client. ``error``: a regex the error message must
    match; else a result is expected and ``check(result)`` returns a problem or None."""

    def run(ctx: Ctx) -> Outcome:
        from gradio_client.exceptions import AppError

        real_args = tuple(a(ctx) if callable(a) else a for a in args)
        real_kwargs = {k: v(ctx) if callable(v) else v for k, v in kwargs.items()}
        try:
            result = ctx.client.predict(*real_args, api_name=api, **real_kwargs)
        except AppError as e:
            text = _app_error_text(e)
            ok = error is not None and re.search(error, text, re.I) is not None
            return Outcome(ok and not UNCLEAR.search(text), f"error: {text[:300]}", text.encode())
        except Exception as e:  # noqa: BLE001 - anything else is a finding
            text = f"{type(e).__name__}: {e}"
            return Outcome(False, f"client failure: {text[:300]}", text.encode())
        seen = json.dumps(result, default=str).encode() + _files_in(result)
        if error is not None:
            return Outcome(False, f"expected an error /{error}/, got a result", seen)
        problem = check(result) if check else None
        return Outcome(problem is None, problem or f"result: {_describe(result)}", seen)

    return Case(name, group, run)


def _files_in(result: Any) -> bytes:
    data = b""
    if isinstance(result, (list, tuple)):
        for item in result:
            data += _files_in(item)
    elif isinstance(result, dict):
        for key in ("image", "path"):
            path = result.get(key)
            if isinstance(path, str) and os.path.isfile(path):
                data += Path(path).read_bytes()
    return data


def _describe(result: Any) -> str:
    if isinstance(result, (list, tuple)) and len(result) == 3:
        gallery, info, notice = result
        return f"{len(gallery or [])} image(s); {str(info)[:120]}; notice: {str(notice)[:120]}"
    return str(result)[:200]


def _params(item: dict) -> str:
    from PIL import Image

    with Image.open(item["image"]) as im:
        return im.info.get("parameters", "")


def expect_images(task: str | None = None, notice: str | None = None, n: int = 1):
    def check(result) -> str | None:
        gallery, info, note = result
        if not gallery or len(gallery) != n:
            return f"expected {n} image(s), got {gallery!r:.200}"
        for item in gallery:
            text = _params(item)
            if task and f"Task: {task}" not in text:
                return f"the image's parameters lack 'Task: {task}': {text[:200]!r}"
        if notice and not re.search(notice, note or "", re.I):
            return f"the notice should say /{notice}/, it says {note!r:.200}"
        return None

    return check


def http_case(name: str, group: str, make: Callable[[Ctx], Raw],
              ok_status: tuple[int, ...] = (400, 403, 404, 405, 413, 422),
              extra: Callable[[Ctx, Raw], str | None] | None = None) -> Case:
    """A raw HTTP request; passes on one of ``ok_status`` (a refusal) with no canary inside."""

    def run(ctx: Ctx) -> Outcome:
        answer = make(ctx)
        problem = None if answer.status in ok_status else f"unexpected status {answer.status}"
        if problem is None and extra is not None:
            problem = extra(ctx, answer)
        text = answer.summary()
        return Outcome(problem is None, text if problem is None else f"{problem}: {text}",
                       answer.body)

    return Case(name, group, run)


def queue_case(name: str, group: str, fn: str, data: Callable[[Ctx], list], *,
               error: str | None = None, check: Callable[[Any], str | None] | None = None,
               http_ok: tuple[int, ...] = ()) -> Case:
    """A raw queue call (also reaches the UI's private events, as a browser would)."""

    def run(ctx: Ctx) -> Outcome:
        kind, answer, seen = ctx.queue(fn, data(ctx))
        if kind == "http":
            ok = any(answer.startswith(f"HTTP {s}") for s in http_ok) or (
                error is not None and re.search(error, answer, re.I) is not None)
            return Outcome(ok, answer[:300], seen)
        if kind == "error":
            ok = error is not None and re.search(error, answer, re.I) is not None
            return Outcome(ok and not UNCLEAR.search(answer), f"error: {answer[:300]}", seen)
        if kind == "timeout":
            return Outcome(False, answer, seen)
        if error is not None:
            return Outcome(False, f"expected an error /{error}/, got a result", seen)
        result = _queue_result(ctx, answer)
        problem = check(result) if check else None
        return Outcome(problem is None, problem or f"result: {_describe(result)}", seen)

    return Case(name, group, run)


def _queue_result(ctx: Ctx, data: list) -> tuple:
    """Turn a raw queue output (gallery of FileData) into what gradio_client would give."""
    gallery, info, notice = (data + [None, None, None])[:3]
    items = []
    for entry in gallery or []:
        image = entry.get("image") if isinstance(entry, dict) else None
        url = (image or {}).get("url")
        if not url:
            continue
        local = ctx.work / "downloads" / f"{uuid.uuid4().hex}.png"
        local.parent.mkdir(exist_ok=True)
        answer = ctx.http.get(url)
        local.write_bytes(answer.content)
        items.append({"image": str(local), "caption": entry.get("caption")})
    return items, info if isinstance(info, str) else "", notice if isinstance(notice, str) else ""


# ---- the cases --------------------------------------------------------------------------------

GEN = "/generate"
EDIT = "/edit"
EDITOR_EVENT = "edit_image"  # the Edit button's private event (the editor's value as the image)
STEPS = 2


def _gen(name, error=None, check=None, prompt="a red circle", group=None, **kw):
    kw.setdefault("steps", 1)
    kw.setdefault("seed", 7)
    kw.setdefault("randomize_seed", False)
    return api_case(name, group or ("api-bounds" if error else "api-result"), GEN, (prompt,),
                    kw, error=error, check=check)


def _edit(name, image, error=None, check=None, group="image-input", prompt="a blue circle",
          **kw):
    from gradio_client import handle_file

    kw.setdefault("steps", STEPS)
    kw.setdefault("strength", 0.5)
    kw.setdefault("seed", 3)
    kw.setdefault("randomize_seed", False)
    if isinstance(kw.get("mask"), str):
        kw["mask"] = lambda ctx, _m=kw["mask"]: handle_file(str(ctx.files[_m]))
    args = (lambda ctx: handle_file(str(ctx.files[image])) if image else None, prompt)
    return api_case(name, group, EDIT, args, kw, error=error, check=check)


def _model(name, ref, error):  # ref: text, or a function of the context
    return api_case(name, "model-ref", GEN, ("a red circle",),
                    dict(model=ref, steps=1, seed=1, randomize_seed=False), error=error)


NOT_IMAGE = r"not a readable image|allowed formats|not accepted"
TOO_MANY_PIXELS = r"pixels; at most \d+ are accepted"
REF_REFUSED = (r"outside the allowed model folders|not an existing folder|not a valid Hub repo id|"
               r"neither a Hub repo id|revision|control character|NUL|is not a Hub repo id|"
               r"must be text")
REFUSED_PATH = r"was not uploaded to this app|not in the cache folder|cannot be accessed"
HUB_UNAVAILABLE = (r"not in the local cache|could not reach|not found on the Hub|offline|"
                   r"could not be used")


def _editor(bg: str | None, layers: tuple[str, ...] = (), composite: str | None = None):
    def data(ctx: Ctx) -> dict:
        return {"background": ctx.file_data(bg) if bg else None,
                "layers": [ctx.file_data(x) for x in layers],
                "composite": ctx.file_data(composite or bg) if (composite or bg) else None,
                "id": None}

    return data


def _editor_args(editor, mode="img2img", prompt="a blue circle", **kw):
    def data(ctx: Ctx) -> list:
        value = editor(ctx) if callable(editor) else editor
        # The Edit button's event (edit_image): editor, prompt, mode, mask (a gr.State: None,
        # the mask is painted in the editor), strength, image guidance, negative prompt, model,
        # steps, guidance, seed, randomize, width, height, images, scheduler, decoder; the UI's
        # 0 (image guidance, guidance, width, height) goes out as null, as the browser sends it.
        return [value, prompt, mode, None, kw.get("strength", 0.5), None, "", None, STEPS,
                None, 5, False, None, None, 1, "model default", "full"]

    return data


def _outside(ctx: Ctx, name: str) -> str:
    return str(ctx.targets[name])


def _traverse_from_upload(ctx: Ctx, target: Path, sep: str = "/", dots: str = "..") -> str:
    """upload_dir + as many '..' as it takes + the target's absolute path."""
    depth = len(ctx.upload_dir.parts) + 1
    return str(ctx.upload_dir) + sep + sep.join([dots] * depth) + str(target).replace("/", sep)


def _file_route_cases() -> list[Case]:
    cases: list[Case] = []

    def get(path_fn: Callable[[Ctx], str]):
        return lambda ctx: ctx.get(path_fn(ctx))

    for target in ("canary-tmp", "canary-beside-uploads", "canary-project", "passwd"):
        cases += [
            http_case(f"file= absolute path to {target}", "file-routes",
                      get(lambda c, t=target: f"{c.prefix}/file={_outside(c, t)}")),
            http_case(f"file= traversal from the upload folder to {target}", "file-routes",
                      get(lambda c, t=target: f"{c.prefix}/file="
                          + _traverse_from_upload(c, c.targets[t]))),
            http_case(f"file= %2e%2e%2f-encoded traversal to {target}", "file-routes",
                      get(lambda c, t=target: f"{c.prefix}/file="
                          + quote(_traverse_from_upload(c, c.targets[t]), safe="")
                          .replace(".", "%2e"))),
        ]
    canary = "canary-beside-uploads"
    cases += [
        http_case("file= double-encoded traversal", "file-routes",
                  get(lambda c: f"{c.prefix}/file=" + quote(quote(
                      _traverse_from_upload(c, c.targets[canary]), safe=""), safe=""))),
        http_case("file= backslash traversal", "file-routes",
                  get(lambda c: f"{c.prefix}/file=" + quote(
                      _traverse_from_upload(c, c.targets[canary], sep="\\"), safe=":"))),
        http_case("file= overlong UTF-8 dots (%c0%ae)", "file-routes",
                  get(lambda c: f"{c.prefix}/file={c.upload_dir}/"
                      + "%c0%ae%c0%ae/" * (len(c.upload_dir.parts) + 1)
                      + str(c.targets[canary]).lstrip("/"))),
        http_case("file= fullwidth dots (U+FF0E)", "file-routes",
                  get(lambda c: f"{c.prefix}/file={c.upload_dir}/"
                      + quote("\uff0e\uff0e/") * (len(c.upload_dir.parts) + 1)
                      + str(c.targets[canary]).lstrip("/"))),
        http_case("file= NUL byte after an allowed prefix", "file-routes",
                  get(lambda c: f"{c.prefix}/file={c.upload_dir}/x.png%00/../../"
                      + str(c.targets[canary]).lstrip("/"))),
        http_case("file= file:// URL", "file-routes",
                  get(lambda c: f"{c.prefix}/file=file://{c.targets['canary-tmp']}")),
        http_case("file= loopback http URL (SSRF)", "file-routes",
                  get(lambda c: f"{c.prefix}/file=http://127.0.0.1:{c.port}/config")),
        http_case("file= the upload folder itself (a directory)", "file-routes",
                  get(lambda c: f"{c.prefix}/file={c.upload_dir}")),
        http_case("file= relative path into the project (app.py)", "file-routes",
                  get(lambda c: f"{c.prefix}/file=app.py")),
        http_case("file= relative .git/config", "file-routes",
                  get(lambda c: f"{c.prefix}/file=.git/config")),
        http_case("file= /proc/self/environ (the token)", "file-routes",
                  get(lambda c: f"{c.prefix}/file=/proc/self/environ")),
        http_case("file= Hugging Face token file", "file-routes",
                  get(lambda c: f"{c.prefix}/file={Path.home()}/.cache/huggingface/token")),
        http_case("file= examples cache then ../ (a 'created' folder)", "file-routes",
                  get(lambda c: f"{c.prefix}/file=.gradio/cached_examples/../../app.py")),
        http_case("deprecated /file/<path> route", "file-routes",
                  get(lambda c: f"{c.prefix}/file/{c.targets['canary-tmp']}")),
        http_case("/file= without the API prefix", "file-routes",
                  get(lambda c: f"/file={c.targets['canary-tmp']}")),
        http_case("/static/ raw ../ traversal", "file-routes",
                  get(lambda c: "/static/../../../../../../../etc/passwd"),
                  ok_status=(400, 403, 404)),
        http_case("/static/ encoded traversal", "file-routes",
                  get(lambda c: "/static/" + "..%2f" * 12 + "etc%2fpasswd")),
        http_case("/assets/ encoded traversal to app.py", "file-routes",
                  get(lambda c: "/assets/" + "..%2f" * 12 + quote(str(REPO / "app.py")[1:],
                                                                   safe=""))),
        http_case("/svelte/ encoded traversal", "file-routes",
                  get(lambda c: "/svelte/" + "..%2f" * 12 + "etc%2fpasswd")),
        http_case("custom_component traversal", "file-routes",
                  get(lambda c: f"{c.prefix}/custom_component/x/client/..%2f..%2f/"
                      + "..%2f" * 10 + "etc%2fpasswd")),
        http_case("proxy= to a loopback URL", "file-routes",
                  get(lambda c: f"{c.prefix}/proxy=http://127.0.0.1:{c.port}/config")),
        http_case("double slash absolute path", "file-routes",
                  get(lambda c: "//etc/passwd"), ok_status=(200, 400, 403, 404),
                  extra=lambda c, r: None if b"root:" not in r.body else "passwd served"),
        http_case("monitoring summary is off", "file-routes",
                  get(lambda c: "/monitoring/summary"), ok_status=(403, 404)),
    ]
    return cases


def _upload_cases() -> list[Case]:
    def traversal_name(ctx: Ctx, name: str) -> Raw:
        body, ctype = multipart([(name, b"VGEN-UPLOAD-TRAVERSAL")])
        return ctx.post(f"{ctx.prefix}/upload", body, ctype)

    def stays_inside(ctx: Ctx, answer: Raw) -> str | None:
        try:
            (path,) = json.loads(answer.body)
        except (ValueError, TypeError):
            return "the upload answer is not a list of one path"
        if not Path(path).resolve().is_relative_to(ctx.upload_dir.resolve()):
            return f"stored outside the upload folder: {path}"
        for leaked in (Path("/tmp/vgen-evil.txt"), Path("/etc/vgen-evil.txt")):
            if leaked.exists():
                return f"{leaked} was written"
        return None

    def big_upload(ctx: Ctx, size: int, chunked: bool = False) -> Raw:
        body, ctype = multipart([("big.png", b"\0" * size)])
        return ctx.post(f"{ctx.prefix}/upload", body, ctype, chunked=chunked, timeout=60)

    def many_files(ctx: Ctx) -> Raw:
        body, ctype = multipart([(f"f{i}.png", b"\0" * (6 << 20)) for i in range(5)])
        return ctx.post(f"{ctx.prefix}/upload", body, ctype, timeout=60)

    def big_json(ctx: Ctx, chunked: bool = False) -> Raw:
        body = json.dumps({"data": ["x" * (3 << 20)], "fn_index": 0,
                           "session_hash": "big"}).encode()
        return ctx.post(f"{ctx.prefix}/queue/join", body, "application/json", chunked=chunked)

    ok200 = (200,)
    return [
        http_case("upload named ../../../tmp/vgen-evil.txt", "uploads",
                  lambda c: traversal_name(c, "../../../../../../tmp/vgen-evil.txt"),
                  ok_status=ok200 + (400,), extra=lambda c, r: stays_inside(c, r)
                  if r.status == 200 else None),
        http_case("upload named /etc/vgen-evil.txt", "uploads",
                  lambda c: traversal_name(c, "/etc/vgen-evil.txt"),
                  ok_status=ok200 + (400,), extra=lambda c, r: stays_inside(c, r)
                  if r.status == 200 else None),
        http_case("upload with a 400-character name", "uploads",
                  lambda c: traversal_name(c, "a" * 400 + ".png"), ok_status=ok200 + (400,),
                  extra=lambda c, r: stays_inside(c, r) if r.status == 200 else None),
        http_case("upload larger than max_file_size (21 MB)", "uploads",
                  lambda c: big_upload(c, 21 << 20), ok_status=(413,)),
        http_case("upload larger than max_file_size, chunked", "uploads",
                  lambda c: big_upload(c, 21 << 20, chunked=True), ok_status=(413,)),
        http_case("five 6 MB files in one upload (30 MB)", "uploads", many_files,
                  ok_status=(413,)),
        http_case("3 MB JSON body to queue/join", "uploads", big_json, ok_status=(413,)),
        http_case("3 MB JSON body to queue/join, chunked", "uploads",
                  lambda c: big_json(c, chunked=True), ok_status=(413,)),
        http_case("queue/join with a body that is not JSON", "uploads",
                  lambda c: c.post(f"{c.prefix}/queue/join", b"{not json", "application/json")),
        http_case("queue/join with an unknown fn_index", "uploads",
                  lambda c: c.post(f"{c.prefix}/queue/join", json.dumps(
                      {"data": [], "fn_index": 99999, "session_hash": "x"}).encode(),
                      "application/json"), ok_status=(400, 404, 422)),
        http_case("accept_blobs with layer index 2**62", "uploads",
                  lambda c: _blob(c, "layer", str(2 ** 62))),
        http_case("accept_blobs with an unknown kind", "uploads",
                  lambda c: _blob(c, "../../etc", "0")),
        http_case("accept_blobs from 60 editor states (bounded store)", "uploads",
                  lambda c: _many_blobs(c, 60), ok_status=(200,)),
    ]


def _blob(ctx: Ctx, kind: str, index: str, blob_id: str | None = None) -> Raw:
    editor = next(b for b in ctx.config.get("components", [])
                  if b.get("props", {}).get("elem_id") == "edit-editor")
    fields = {"component_id": str(editor["id"]), "session_hash": uuid.uuid4().hex,
              "fn_name": "accept_blobs", "type": kind, "index": index,
              "id": blob_id or uuid.uuid4().hex}
    body, ctype = multipart([("blob.png", ctx.files["ok.png"].read_bytes())], fields,
                            field_name="file")
    return ctx.post(f"{ctx.prefix}/component_server", body, ctype)


def _many_blobs(ctx: Ctx, n: int) -> Raw:
    last = None
    for i in range(n):
        last = _blob(ctx, "background", "null", f"flood-{i}")
        if last.status != 200:
            return last
    return last


def _raw_generate(ctx: Ctx, steps_json: str, session: str) -> bytes:
    """JSON that json.dumps would refuse to write (NaN, Infinity, 1e999)."""
    return ('{"data": ["a red circle", "", null, %s, null, 1, false, null, null, 1, '
            '"model default", "full", null], "fn_index": %d, "session_hash": "%s"}'
            % (steps_json, ctx.fn_index("generate"), session)).encode()


def build_cases(with_model_root: bool = False, mcp: bool = False) -> list[Case]:
    cases: list[Case] = []
    # -- API arguments: out of range ---------------------------------------------------------
    cases += [
        _gen("size 10000x10000", r"width must be from 64 to 2048", width=10000, height=10000),
        _gen("width not a multiple of 8", r"multiple of 8", width=100, height=64),
        _gen("width below the minimum", r"width must be from 64", width=32, height=64),
        _gen("area over VGEN_MAX_AREA (2048x2048)", r"pixels; at most", width=2048,
             height=2048),
        _gen("steps 0", r"steps must be from 1", steps=0),
        _gen("steps 100000", r"steps must be from 1 to", steps=100000),
        _gen("steps negative", r"steps must be from 1", steps=-5),
        _gen("steps 1e308", r"steps must be from 1 to", steps=1e308),
        _gen("guidance negative", r"guidance must be from 0", guidance=-1),
        _gen("guidance 1000", r"guidance must be from 0", guidance=1000),
        _gen("0 images", r"number of images must be from 1", num_images=0),
        _gen("10**9 images", r"number of images must be from 1", num_images=10 ** 9),
        _gen("seed negative", r"seed must be from 0", seed=-2),
        _gen("seed 2**40", r"seed must be from 0", seed=2 ** 40),
        _gen("prompt of 100000 characters", r"at most 2000", prompt="circle " * 14286),
        _gen("negative prompt of 100000 characters", r"at most 2000",
             negative_prompt="x" * 100000),
        _gen("prompt with a NUL", r"NUL", prompt="a red\x00circle"),
        _gen("unknown scheduler", r"not in the list of choices|scheduler must be one of",
             scheduler="rm -rf /"),
    ]
    # -- API arguments: wrong types ------------------------------------------------------------
    cases += [
        *(replace_group(c, "api-types") for c in (
        _gen("steps as text", r"Steps must be a whole number", steps="abc"),
        _gen("steps 2.5", r"Steps must be a whole number", steps=2.5),
        _gen("steps true", r"Steps must be a whole number", steps=True),
        _gen("guidance as text", r"Guidance must be a number", guidance="lots"),
        _gen("seed as text", r"Seed must be a whole number", seed="abc"),
        _gen("width as an object", r"Width must be a whole number", width={"a": 1}),
        _gen("images as a list", r"Images.* must be a whole number", num_images=[1]),
        _gen("randomize_seed as text", r"Randomize seed must be true or false",
             randomize_seed="false"),
        _gen("prompt as a list", r"Prompt must be text", prompt=["a", "b"]),
        _gen("model as a number", r"Model must be text", model=5))),
        Case("steps NaN (raw JSON)", "api-types", lambda c: _queue_raw(c, "NaN",
                                                                        r"finite number")),
        Case("steps Infinity (raw JSON)", "api-types", lambda c: _queue_raw(c, "Infinity",
                                                                             r"finite number")),
        Case("steps 1e999 (raw JSON)", "api-types", lambda c: _queue_raw(c, "1e999",
                                                                          r"finite number")),
        _gen("empty prompt is a valid request", check=expect_images(), prompt=""),
        _gen("scheduler None means the model's", check=expect_images(), scheduler=None),
    ]
    # -- the other endpoints: /expand, /compare, /attention, /status -------------------------
    cases += [
        api_case("expand: temperature 5", "api-bounds", "/expand", ("a red circle",),
                 dict(temperature=5), error=r"temperature must be a number from 0"),
        api_case("expand: 100 variants", "api-bounds", "/expand", ("a red circle",),
                 dict(num_variants=100), error=r"variants must be an integer from 1 to 8"),
        api_case("expand: prompt with a NUL", "api-bounds", "/expand", ("a red\x00circle",), {},
                 error=r"at most 2000 characters, without NUL"),
        api_case("expand: language model ../../etc", "model-ref", "/expand", ("a red circle",),
                 dict(lm="../../etc"), error=REF_REFUSED),
        api_case("compare: 39 columns", "api-bounds", "/compare", ("a red circle",),
                 dict(x_param="guidance", x_values=",".join(str(i) for i in range(1, 40)), steps=1),
                 error=r"cells; at most \d+ are allowed"),
        api_case("compare: unknown axis", "api-bounds", "/compare", ("a red circle",),
                 dict(x_param="rm -rf /", x_values="1, 2"),
                 error=r"not in the list of choices|unknown axis parameter"),
        api_case("compare: steps 100000 on an axis", "api-bounds", "/compare", ("a red circle",),
                 dict(x_param="steps", x_values="1, 100000", y_param="none"),
                 error=r"steps must be from 1 to"),
        api_case("compare: model ../../etc", "model-ref", "/compare", ("a red circle",),
                 dict(x_param="guidance", x_values="1, 2", model="../../etc"), error=REF_REFUSED),
        api_case("attention: model /etc", "model-ref", "/attention", ("a red circle",),
                 dict(model="/etc"), error=REF_REFUSED),
        api_case("attention: prompt of 100000 characters", "api-bounds", "/attention",
                 ("circle " * 14286,), {}, error=r"at most 2000"),
        api_case("status answers without engine work", "api-result", "/status", (), {},
                 check=lambda r: None if isinstance(r, dict) and "default_models" in r
                 else f"not a status: {r!r:.200}"),
    ]
    # -- model references ---------------------------------------------------------------------
    cases += [
        _model("model ../../etc", "../../etc", REF_REFUSED),
        _model("model /etc", "/etc", REF_REFUSED),
        _model("model /", "/", REF_REFUSED),
        _model("model ~/.ssh", "~/.ssh", REF_REFUSED),
        _model("model checkpoints/../../../etc", "checkpoints/../../../etc", REF_REFUSED),
        _model("model org/name@../../etc (revision)", "org/name@../../etc", REF_REFUSED),
        _model("model org/../name", "org/../name", REF_REFUSED),
        _model("model with 200-character owner", "a" * 200 + "/b", REF_REFUSED),
        _model("model with a NUL", "org/name\x00", REF_REFUSED),
        _model("model with a newline", "org/name\nX-Injected: 1", REF_REFUSED),
        _model("model file:///etc/passwd", "file:///etc/passwd", REF_REFUSED),
        _model("model https URL", "https://huggingface.co/org/name", REF_REFUSED),
        _model("model C:\\Windows", "C:\\Windows", REF_REFUSED),
        _model("model %2e%2e/%2e%2e/etc", "%2e%2e/%2e%2e/etc", REF_REFUSED),
        _model("unknown Hub repo", "vgen-attack/no-such-model-" + secrets.token_hex(4),
               HUB_UNAVAILABLE),
        _model("model: the checkpoints root itself", "checkpoints", REF_REFUSED),
        _model("model: checkpoints/../vgen (project code)", "checkpoints/../vgen", REF_REFUSED),
    ]
    if with_model_root:  # folders planted in an allowed root the app was started with
        cases += [
            _model("model: a folder in an allowed root that is not a model",
                   lambda c: str(c.planted / "not-a-model"), r"not a model folder|no model_index"),
            _model("model: pickle-only weights (.bin)", lambda c: str(c.planted / "pickle-only"),
                   r"only has pickle weights|only loads \.safetensors"),
            _model("model: a symlink in an allowed root that points to /etc",
                   lambda c: str(c.planted / "link-out"), REF_REFUSED + r"|links outside"),
            _model("model: bare name of that symlink", lambda c: c.planted.name + "/link-out",
                   REF_REFUSED + r"|links outside|" + HUB_UNAVAILABLE),
            Case("model: custom pipeline code in the folder is never run", "model-ref",
                 _custom_code_case),
        ]
    # -- image input through /edit -------------------------------------------------------------
    cases += [
        _edit("edit without an image", None, r"needs a source image"),
        _edit("edit: a text file", "notes.txt", NOT_IMAGE),
        _edit("edit: an empty file", "empty.png", NOT_IMAGE + r"|no such image"),
        _edit("edit: a truncated PNG", "truncated.png", r"truncated or corrupt|" + NOT_IMAGE),
        _edit("edit: HTML named .png", "html.png", NOT_IMAGE),
        _edit("edit: PNG bomb 20000x20000", "bomb-20000.png", TOO_MANY_PIXELS),
        _edit("edit: PNG bomb 12000x12000", "bomb-12000.png", TOO_MANY_PIXELS),
        _edit("edit: JPEG header 65500x65500", "bomb-header.jpg", TOO_MANY_PIXELS),
        _edit("edit: GIF header 65535x65535", "bomb-header.gif", TOO_MANY_PIXELS),
        _edit("edit: SVG", "image.svg", NOT_IMAGE),
        _edit("edit: EPS (PostScript)", "image.eps", NOT_IMAGE),
        _edit("edit: PDF", "image.pdf", NOT_IMAGE),
        _edit("edit: ICO (not allow-listed)", "image.ico", NOT_IMAGE),
        _edit("edit: PSD bytes", "image.psd.png", NOT_IMAGE),
        _edit("edit: animated GIF uses its first frame and says so", "animated.gif",
              check=expect_images("img2img", notice=r"first frame")),
        _edit("edit: CMYK JPEG", "cmyk.jpg", check=expect_images("img2img")),
        _edit("edit: 16-bit PNG", "gray16.png", check=expect_images("img2img")),
        _edit("edit: EXIF-rotated JPEG", "exif-rotated.jpg", check=expect_images("img2img")),
        _edit("edit: RGBA PNG", "rgba.png", check=expect_images("img2img")),
        _edit("edit: LA PNG", "la.png", check=expect_images("img2img")),
        _edit("edit: palette PNG with transparency", "palette.png",
              check=expect_images("img2img")),
        _edit("edit: grayscale PNG", "gray.png", check=expect_images("img2img")),
        _edit("edit: non-square source at the model's default size", "wide.png",
              check=expect_images("img2img")),
        _edit("inpaint: mask of another size", "ok.png", check=expect_images("inpaint"),
              mode="inpaint", mask="mask-other-size.png"),
        _edit("inpaint: a text file as the mask", "ok.png", NOT_IMAGE, mode="inpaint",
              mask="notes.txt"),
        _edit("inpaint: a bomb as the mask", "ok.png", TOO_MANY_PIXELS, mode="inpaint",
              mask="bomb-12000.png"),
        _edit("inpaint without a mask", "ok.png", r"needs a mask", mode="inpaint"),
        _edit("edit mode 'evil'", "ok.png", r"not in the list of choices|mode must be",
              mode="evil"),
        _edit("strength 5", "ok.png", r"strength must be from 0.01", strength=5),
        _edit("strength 0", "ok.png", r"strength must be from 0.01", strength=0),
        _edit("strength as text", "ok.png", r"Strength must be a number", strength="max"),
        _edit("image guidance -1 (instruct)", "ok.png", r"image guidance must be from 0|"
              r"not an instruction-editing|instruct", mode="instruct", image_guidance=-1),
    ]
    # -- file paths smuggled into API payloads -------------------------------------------------
    cases += [
        queue_case("edit image FileData pointing at the tmp canary", "payload-paths", "edit",
                   lambda c: [_fd(c.targets["canary-tmp"]), "x", "img2img", None, 0.5, 1.5,
                              "", None, 2, None, 1, False, None, None, 1, "model default", "full"],
                   error=REFUSED_PATH),
        queue_case("edit image FileData at /etc/passwd", "payload-paths", "edit",
                   lambda c: [_fd(Path("/etc/passwd")), "x", "img2img", None, 0.5, 1.5, "",
                              None, 2, None, 1, False, None, None, 1, "model default", "full"],
                   error=REFUSED_PATH),
        queue_case("edit image FileData with ../ out of the upload folder", "payload-paths",
                   "edit",
                   lambda c: [_fd(_traverse_from_upload(c, c.targets["canary-beside-uploads"])),
                              "x", "img2img", None, 0.5, 1.5, "", None, 2, None, 1, False,
                              None, None, 1, "model default", "full"],
                   error=REFUSED_PATH),
        queue_case("edit image FileData with a loopback URL (SSRF)", "payload-paths", "edit",
                   lambda c: [{"path": f"http://127.0.0.1:{c.port}/config",
                               "url": f"http://127.0.0.1:{c.port}/config",
                               "meta": {"_type": "gradio.FileData"}}, "x", "img2img", None,
                              0.5, 1.5, "", None, 2, None, 1, False, None, None, 1,
                              "model default", "full"],
                   error=r"private, loopback or unresolvable address"),
        queue_case("gallery FileData at the canary (send to edit)", "payload-paths",
                   "send_to_edit",
                   lambda c: [[{"image": _fd(c.targets["canary-tmp"]), "caption": None}], None,
                              "x"],
                   error=REFUSED_PATH),
        queue_case("editor background FileData at /etc/passwd", "payload-paths",
                   EDITOR_EVENT,
                   _editor_args({"background": _fd(Path("/etc/passwd")), "layers": [],
                                 "composite": _fd(Path("/etc/passwd")), "id": None}),
                   error=REFUSED_PATH),
        queue_case("restore-parameters file at the project canary", "payload-paths",
                   "restore_parameters", lambda c: [_fd(c.targets["canary-project"])],
                   error=REFUSED_PATH),
    ]
    # -- the image editor (a private event, as the browser sends it) ---------------------------
    cases += [
        queue_case("editor: PNG bomb 12000x12000 as the background", "editor",
                   EDITOR_EVENT, _editor_args(_editor("bomb-12000.png")),
                   error=TOO_MANY_PIXELS),
        queue_case("editor: JPEG header bomb", "editor", EDITOR_EVENT,
                   _editor_args(_editor("bomb-header.jpg")), error=TOO_MANY_PIXELS),
        queue_case("editor: EPS as the background", "editor", EDITOR_EVENT,
                   _editor_args(_editor("image.eps")), error=NOT_IMAGE),
        queue_case("editor: a truncated PNG", "editor", EDITOR_EVENT,
                   _editor_args(_editor("truncated.png")),
                   error=r"truncated or corrupt|" + NOT_IMAGE),
        queue_case("editor: a bomb as a brush layer", "editor", EDITOR_EVENT,
                   _editor_args(_editor("ok.png", ("bomb-12000.png",)), mode="inpaint"),
                   error=TOO_MANY_PIXELS),
        queue_case("editor: animated GIF says 'first frame'", "editor", EDITOR_EVENT,
                   _editor_args(_editor("animated.gif")),
                   check=expect_images("img2img", notice=r"first frame")),
        queue_case("editor: inpaint with a painted layer", "editor", EDITOR_EVENT,
                   _editor_args(_editor("ok.png", ("rgba.png",)), mode="inpaint"),
                   check=expect_images("inpaint")),
    ]
    cases += _endpoint_cases()
    cases += _mcp_cases() if mcp else _mcp_off_cases()
    cases += _file_route_cases()
    cases += _upload_cases()
    return cases


# ---- every endpoint: the other API routes, raw JSON, MCP ----------------------------------------

ENDPOINTS = ("generate", "edit", "attention", "compare", "expand", "status")
TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|File \"/[^\"]+\.py\", line \d+")
NESTED = RawJSON("[" * 50000 + "]" * 50000)  # deeper than Python's json can parse
NOT_FINITE = r"finite number|must be a number|must be a whole number"


def _no_traceback(_ctx: Ctx, answer: Raw) -> str | None:
    return "a traceback came back" if TRACEBACK.search(answer.body) else None


def robust_case(name: str, group: str, make: Callable[[Ctx], Raw],
                ok_status: tuple[int, ...] = (200, 400, 404, 405, 413, 422)) -> Case:
    """Hostile input that need not get a clear message (Gradio answers it before any handler):
    passes when the answer is not a 5xx (nor none at all) and carries no traceback."""
    return http_case(name, group, make, ok_status=ok_status, extra=_no_traceback)


def _call_route(ctx: Ctx, api: str, body: bytes, *, chunked: bool = False) -> Raw:
    """Gradio's REST route: POST /call/<api> (an event id), then GET its SSE stream; one Raw
    with both bodies and the worse status."""
    posted = ctx.post(f"{ctx.prefix}/call/{api}", body, "application/json", chunked=chunked)
    if posted.status != 200:
        return posted
    try:
        event = json.loads(posted.body)["event_id"]
    except (ValueError, KeyError, TypeError):
        return Raw(posted.status, posted.headers, posted.body, "(no event id)")
    streamed = ctx.get(f"{ctx.prefix}/call/{api}/{quote(str(event), safe='')}", timeout=120)
    return Raw(streamed.status if streamed.status != 200 else posted.status, streamed.headers,
               posted.body + b"\n" + streamed.body, streamed.note)


def _call_data(ctx: Ctx, api: str, data: list) -> bytes:
    return raw_json({"data": data}).encode()


def _queue_body(ctx: Ctx, api: str, data: list, session: str) -> bytes:
    return raw_json({"data": data, "fn_index": ctx.fn_index(api), "session_hash": session,
                     "event_data": None, "trigger_id": None}).encode()


def _raw_value_case(name: str, api: str, field_name: str, value: str, error: str) -> Case:
    """One input written as raw JSON (NaN, Infinity, 1e999) through the queue, as a browser
    would send it: a clear error naming the field, or an HTTP refusal."""

    def run(ctx: Ctx) -> Outcome:
        data = ctx.data(api, **{field_name: RawJSON(value)})
        kind, answer, seen = ctx.queue(api, [], raw_body=lambda s: _queue_body(ctx, api, data, s))
        text = str(answer)
        ok = kind == "error" and re.search(error, text, re.I) is not None
        return Outcome(ok and not UNCLEAR.search(text), f"{kind}: {text[:300]}", seen)

    return Case(name, "api-types", run)


def _endpoint_cases() -> list[Case]:
    """What the older endpoints get, for /attention, /compare, /expand and /status too; then
    the same hostile bodies on every endpoint through each route Gradio serves it on
    (queue/join, /call/<api>, /run/<api>)."""
    bounds, types = "api-bounds", "api-types"
    att, cmp_, exp = "/attention", "/compare", "/expand"
    long = "circle " * 14286
    cases = [
        api_case("attention: steps 100000", bounds, att, ("a red circle",), dict(steps=100000),
                 error=r"steps must be from 1 to"),
        api_case("attention: seed 2**40", bounds, att, ("a red circle",), dict(seed=2 ** 40),
                 error=r"seed must be from 0"),
        api_case("attention: prompt with a NUL", bounds, att, ("a red\x00circle",), {},
                 error=r"NUL"),
        api_case("attention: negative prompt of 100000 characters", bounds, att,
                 ("a red circle",), dict(negative_prompt="x" * 100000), error=r"at most 2000"),
        api_case("attention: steps as text", types, att, ("a red circle",), dict(steps="abc"),
                 error=r"Steps.* must be a whole number"),
        api_case("attention: seed as text", types, att, ("a red circle",), dict(seed="abc"),
                 error=r"Seed.* must be a whole number"),
        api_case("attention: prompt as a list", types, att, (["a", "b"],), {},
                 error=r"Prompt.* must be text"),
        api_case("attention: model as a number", types, att, ("a red circle",), dict(model=5),
                 error=r"Model must be text"),
        _raw_value_case("attention: steps NaN (raw JSON)", "attention", "steps", "NaN",
                        NOT_FINITE),
        api_case("compare: seed 2**40", bounds, cmp_, ("a red circle",),
                 dict(x_param="guidance", x_values="1, 2", seed=2 ** 40),
                 error=r"seed must be from"),
        api_case("compare: base guidance 1000", bounds, cmp_, ("a red circle",),
                 dict(x_param="steps", x_values="1, 2", y_param="none", guidance=1000),
                 error=r"guidance must be from 0"),
        api_case("compare: values of 100000 characters", bounds, cmp_, ("a red circle",),
                 dict(x_param="prompt", x_values="|".join(f"x{i}" for i in range(20000)),
                      y_param="none"),
                 error=r"at most \d+|cells"),
        api_case("compare: unknown row axis", bounds, cmp_, ("a red circle",),
                 dict(x_param="guidance", x_values="1, 2", y_param="../../etc", y_values="1"),
                 error=r"not in the list of choices|unknown axis parameter"),
        api_case("compare: steps as text", types, cmp_, ("a red circle",),
                 dict(x_param="guidance", x_values="1, 2", steps="abc"),
                 error=r"Steps must be a whole number"),
        api_case("compare: prompt as a list", types, cmp_, (["a", "b"],),
                 dict(x_param="guidance", x_values="1, 2"), error=r"Prompt must be text"),
        api_case("compare: values as a number", types, cmp_, ("a red circle",),
                 dict(x_param="guidance", x_values=5), error=r"must be text"),
        _raw_value_case("compare: seed Infinity (raw JSON)", "compare", "seed", "Infinity",
                        NOT_FINITE),
        api_case("expand: 10**9 variants", bounds, exp, ("a red circle",),
                 dict(num_variants=10 ** 9), error=r"variants must be an integer from 1 to 8"),
        api_case("expand: seed 2**70", bounds, exp, ("a red circle",), dict(seed=2 ** 70),
                 error=r"seed must be|at most"),
        api_case("expand: prompt of 100000 characters", bounds, exp, (long,), {},
                 error=r"at most 2000"),
        api_case("expand: system prompt of 100000 characters", bounds, exp, ("a red circle",),
                 dict(system_prompt="x" * 100000), error=r"at most \d+"),
        api_case("expand: seed as text", types, exp, ("a red circle",), dict(seed="abc"),
                 error=r"Seed.* must be a whole number|seed must be"),
        api_case("expand: temperature as text", types, exp, ("a red circle",),
                 dict(temperature="hot"), error=r"Temperature must be a number|temperature"),
        api_case("expand: prompt as a list", types, exp, (["a", "b"],), {},
                 error=r"Prompt must be text|prompt must be"),
        api_case("expand: language model as a number", types, exp, ("a red circle",),
                 dict(lm=5), error=r"must be text|not a valid|language model"),
        _raw_value_case("expand: temperature NaN (raw JSON)", "expand", "temperature", "NaN",
                        NOT_FINITE + r"|temperature must be"),
    ]
    for api in ENDPOINTS:
        group = f"routes-{api}"
        cases += [
            robust_case(f"/call/{api}: 100 extra inputs", group,
                        lambda c, a=api: _call_route(c, a, _call_data(c, a, c.data(a) + [1] * 100))),
            # /run/<api> would run a queued handler outside the queue: off (api_open=False).
            http_case(f"/run/{api}: 100 extra inputs", group,
                      lambda c, a=api: c.post(f"{c.prefix}/run/{a}", _call_data(
                          c, a, c.data(a) + [1] * 100), "application/json"),
                      ok_status=(404,), extra=_no_traceback),
            http_case(f"/run/{api}: a valid call (the route is off)", group,
                      lambda c, a=api: c.post(f"{c.prefix}/run/{a}", _call_data(
                          c, a, c.data(a)), "application/json"),
                      ok_status=(404,), extra=_no_traceback),
            http_case(f"/call/{api}: 3 MB body", group,
                      lambda c, a=api: _call_route(c, a, _call_data(
                          c, a, [RawJSON(json.dumps("x" * (3 << 20)))])), ok_status=(413,)),
            http_case(f"/call/{api}: 3 MB body, chunked", group,
                      lambda c, a=api: _call_route(c, a, _call_data(
                          c, a, [RawJSON(json.dumps("x" * (3 << 20)))]), chunked=True),
                      ok_status=(413,)),
            robust_case(f"queue/join {api}: JSON nested 50000 deep", group,
                        lambda c, a=api: c.post(f"{c.prefix}/queue/join", _queue_body(
                            c, a, [NESTED], uuid.uuid4().hex), "application/json"),
                        ok_status=(400, 413, 422)),
            robust_case(f"/call/{api}: JSON nested 50000 deep", group,
                        lambda c, a=api: _call_route(c, a, _call_data(c, a, [NESTED])),
                        ok_status=(400, 413, 422)),
        ]
        if api != "status":
            cases += [
                robust_case(f"/call/{api}: too few inputs", group,
                            lambda c, a=api: _call_route(c, a, _call_data(c, a, c.data(a)[:1]))),
                http_case(f"/run/{api}: too few inputs", group,
                          lambda c, a=api: c.post(f"{c.prefix}/run/{a}", _call_data(
                              c, a, c.data(a)[:1]), "application/json"),
                          ok_status=(404,), extra=_no_traceback),
                robust_case(f"/call/{api}: every input a FileData at the canary", group,
                            lambda c, a=api: _call_route(c, a, _call_data(
                                c, a, [_fd(c.targets["canary-tmp"])] * len(c.data(a))))),
            ]
    return cases


def _mcp_cases() -> list[Case]:
    """The MCP route (``/gradio_api/mcp/``, streamable HTTP), when the app serves it."""
    group = "mcp"

    def tool_case(name: str, api: str, arguments: Callable[[Ctx], Any] | dict, *,
                  error: str | None = None, check: Callable[[Ctx, dict], str | None] | None = None,
                  meta: dict | None = None) -> Case:
        def run(ctx: Ctx) -> Outcome:
            args = arguments(ctx) if callable(arguments) else arguments
            params = {"name": ctx.mcp_tool(api), "arguments": args}
            if meta:
                params["_meta"] = meta
            answer, message = ctx.mcp("tools/call", params)
            seen = answer.body
            if answer.status != 200 or not isinstance(message, dict):
                return Outcome(False, answer.summary(), seen)
            if "error" in message:  # a JSON-RPC error: the request itself was refused
                text = str(message["error"].get("message", message["error"]))
                ok = error is not None and re.search(error, text, re.I) is not None
                return Outcome(ok, f"JSON-RPC error: {text[:300]}", seen)
            result = message.get("result") or {}
            text = " ".join(str(c.get("text", "")) for c in result.get("content", [])
                            if isinstance(c, dict))
            if result.get("isError"):
                ok = error is not None and re.search(error, text, re.I) is not None
                return Outcome(ok and not UNCLEAR.search(text), f"error: {text[:300]}", seen)
            if error is not None:
                return Outcome(False, f"expected an error /{error}/, got {text[:200]}", seen)
            problem = check(ctx, result) if check else None
            return Outcome(problem is None, problem or f"result: {text[:200]}", seen)

        return Case(name, group, run)

    def rpc(name: str, make: Callable[[Ctx], tuple[Raw, Any]], ok_status=(200, 400, 404, 405, 406,
                                                                          413, 422)) -> Case:
        return robust_case(name, group, lambda c: make(c)[0], ok_status=ok_status)

    def lists_every_endpoint(ctx: Ctx) -> Outcome:
        answer, message = ctx.mcp("tools/list")
        tools = {t.get("name") for t in ((message or {}).get("result") or {}).get("tools", [])}
        missing = [api for api in ENDPOINTS if ctx.mcp_tool(api) not in tools]
        ok = answer.status == 200 and not missing
        return Outcome(ok, f"tools: {sorted(tools)}" + (f"; missing {missing}" if missing else ""),
                       answer.body)

    def data_url(ctx: Ctx, name: str, mime: str = "image/png") -> str:
        import base64

        return f"data:{mime};base64," + base64.b64encode(ctx.files[name].read_bytes()).decode()

    def file_url(ctx: Ctx, path: Path) -> str:
        return f"http://127.0.0.1:{ctx.port}{ctx.prefix}/file={path}"

    def has_images(ctx: Ctx, result: dict) -> str | None:
        text = json.dumps(result)
        return None if ("image" in text and ".png" in text) else f"no image in {text[:200]}"

    def is_status(ctx: Ctx, result: dict) -> str | None:
        text = json.dumps(result)
        return None if "default_models" in text else f"not a status: {text[:200]}"

    edit = "edit"
    schema = r"Input validation error|"  # the MCP SDK checks the tool's input schema first
    return [
        Case("mcp: tools/list names every endpoint", group, lists_every_endpoint),
        tool_case("mcp: unknown tool", "no_such_tool", {}, error=r"Unknown tool"),
        tool_case("mcp: generate steps 100000", "generate",
                  {"prompt": "a red circle", "steps": 100000}, error=r"steps must be from 1 to"),
        tool_case("mcp: generate steps as text", "generate",
                  {"prompt": "a red circle", "steps": "abc"},
                  error=schema + r"Steps.* must be a whole number"),
        tool_case("mcp: generate prompt as a list", "generate", {"prompt": ["a", "b"]},
                  error=schema + r"Prompt.* must be text"),
        tool_case("mcp: generate prompt of 100000 characters", "generate",
                  {"prompt": "circle " * 14286}, error=r"at most 2000"),
        tool_case("mcp: generate 10**9 images", "generate",
                  {"prompt": "a red circle", "num_images": 10 ** 9},
                  error=r"number of images must be from 1"),
        tool_case("mcp: generate model ../../etc", "generate",
                  {"prompt": "a red circle", "model": "../../etc"}, error=schema + REF_REFUSED),
        tool_case("mcp: attention model /etc", "attention",
                  {"prompt": "a red circle", "model": "/etc"}, error=schema + REF_REFUSED),
        tool_case("mcp: compare 39 columns", "compare",
                  {"prompt": "a red circle", "x_param": "guidance",
                   "x_values": ",".join(str(i) for i in range(1, 40))},
                  error=r"cells; at most \d+ are allowed"),
        tool_case("mcp: expand temperature 5", "expand",
                  {"prompt": "a red circle", "temperature": 5},
                  error=r"temperature must be a number from 0"),
        tool_case("mcp: edit image as a server path (/etc/passwd)", edit,
                  {"image": "/etc/passwd", "prompt": "x"},
                  error=r"provide a url|" + REFUSED_PATH),
        tool_case("mcp: edit image file:///etc/passwd", edit,
                  {"image": "file:///etc/passwd", "prompt": "x"},
                  error=r"provide a url|" + REFUSED_PATH),
        tool_case("mcp: edit image URL of the canary on this server (SSRF)", edit,
                  lambda c: {"image": file_url(c, c.targets["canary-tmp"]), "prompt": "x"},
                  error=r"private, loopback or unresolvable address|" + REFUSED_PATH),
        tool_case("mcp: edit image URL of cloud metadata (SSRF)", edit,
                  {"image": "http://169.254.169.254/latest/meta-data/", "prompt": "x"},
                  error=r"private, loopback or unresolvable address"),
        tool_case("mcp: edit image data: URL of a PNG bomb", edit,
                  lambda c: {"image": data_url(c, "bomb-12000.png"), "prompt": "x",
                             "steps": STEPS}, error=TOO_MANY_PIXELS),
        tool_case("mcp: edit image data: URL of a text file", edit,
                  lambda c: {"image": data_url(c, "notes.txt", "text/plain"), "prompt": "x",
                             "steps": STEPS}, error=NOT_IMAGE),
        tool_case("mcp: edit image data: URL that is not base64", edit,
                  {"image": "data:image/png;base64,!!!not base64!!!", "prompt": "x"},
                  error=NOT_IMAGE + r"|truncated or corrupt|base64|padding|invalid"),
        tool_case("mcp: edit mask data: URL of a bomb (inpaint)", edit,
                  lambda c: {"image": data_url(c, "ok.png"), "mask": data_url(c, "bomb-12000.png"),
                             "mode": "inpaint", "prompt": "x", "steps": STEPS},
                  error=TOO_MANY_PIXELS),
        tool_case("mcp: edit of a data: URL PNG works", edit,
                  lambda c: {"image": data_url(c, "ok.png"), "prompt": "a blue circle",
                             "steps": STEPS, "seed": 3, "randomize_seed": False},
                  check=has_images),
        tool_case("mcp: generate with a progress token (streamed)", "generate",
                  {"prompt": "a red circle", "steps": 1, "seed": 9, "randomize_seed": False},
                  check=has_images, meta={"progressToken": "vgen-attack"}),
        tool_case("mcp: status answers", "status", {}, check=is_status),
        tool_case("mcp: arguments that are a list", "generate", [1, 2, 3],  # type: ignore[arg-type]
                  error=r"valid dictionary|validation|invalid|arguments"),
        rpc("mcp: a body that is not JSON",
            lambda c: c.mcp("", body=b"{not json"), ok_status=(400,)),
        rpc("mcp: JSON nested 50000 deep",
            lambda c: c.mcp("", body=raw_json({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                               "params": {"name": c.mcp_tool("generate"),
                                                          "arguments": {"prompt": NESTED}}})
                            .encode()), ok_status=(400, 413, 422)),
        rpc("mcp: a batch of 200 requests",
            lambda c: c.mcp("", body=json.dumps([{"jsonrpc": "2.0", "id": i, "method":
                                                  "tools/list"} for i in range(200)]).encode())),
        rpc("mcp: without Accept: text/event-stream",
            lambda c: c.mcp("tools/list", headers={"Accept": "application/json"}),
            ok_status=(406,)),
        rpc("mcp: 3 MB body", lambda c: c.mcp("", body=json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": c.mcp_tool("generate"), "arguments": {"prompt": "x" * (3 << 20)}}})
            .encode()), ok_status=(413,)),
        http_case("mcp: 3 MB body, chunked", group, lambda c: c.post(
            f"{c.prefix}/mcp/", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                                            "params": {"x": "x" * (3 << 20)}}).encode(),
            "application/json", chunked=True,
            headers={"Accept": "application/json, text/event-stream"}), ok_status=(413,)),
        rpc("mcp: SSE messages with a made-up session",
            lambda c: (c.post(f"{c.prefix}/mcp/messages/?session_id=" + "ab" * 16, json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode(),
                "application/json"), None), ok_status=(400, 404)),
        http_case("mcp: ../ traversal under the MCP route", group,
                  lambda c: c.get(f"{c.prefix}/mcp/" + "..%2f" * 8 + "etc%2fpasswd"),
                  ok_status=(400, 403, 404),
                  extra=lambda c, r: "passwd served" if b"root:" in r.body else None),
        http_case("mcp: the schema route", group, lambda c: c.get(f"{c.prefix}/mcp/schema"),
                  ok_status=(200,), extra=_no_traceback),
    ]


def _mcp_off_cases() -> list[Case]:
    return [http_case("mcp: the route is off (start the app with GRADIO_MCP_SERVER=True to "
                      "test it)", "mcp", lambda c: c.mcp("tools/list")[0],
                      ok_status=(404, 405))]


def replace_group(case: Case, group: str) -> Case:
    return Case(case.name, group, case.run)


def _fd(path: Path | str) -> dict:
    return {"path": str(path), "orig_name": Path(str(path)).name,
            "meta": {"_type": "gradio.FileData"}}


def _queue_raw(ctx: Ctx, steps_json: str, error: str) -> Outcome:
    kind, answer, seen = ctx.queue("generate", [],
                                   raw_body=lambda s: _raw_generate(ctx, steps_json, s))
    text = str(answer)
    ok = kind == "error" and re.search(error, text, re.I) is not None
    return Outcome(ok and not UNCLEAR.search(text), f"{kind}: {text[:300]}", seen)


def _custom_code_case(ctx: Ctx) -> Outcome:
    folder = ctx.planted / "custom-code"
    outcome = api_case("", "", GEN, ("a red circle",), dict(model=str(folder), steps=1),
                       error=r"could not be loaded|not a diffusion pipeline|no model_index|"
                             r"pickle|unsupported|trust_remote_code|custom").run(ctx)
    if (folder / "EXECUTED").exists():
        return Outcome(False, "the folder's Python code was run: " + outcome.answer, outcome.seen)
    return outcome


def plant_models(root: Path) -> Path:
    """Hostile model folders inside an allowed root: not a model, pickle-only weights, a
    symlink out of the root, a pipeline naming custom code (that would leave a mark if run)."""
    planted = root / f"vgen-attack-{secrets.token_hex(4)}"
    (planted / "not-a-model").mkdir(parents=True)
    (planted / "not-a-model" / "README.md").write_text("nothing to load here\n")
    pickle = planted / "pickle-only"
    (pickle / "unet").mkdir(parents=True)
    (pickle / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
         "unet": ["diffusers", "UNet2DConditionModel"]}))
    (pickle / "unet" / "config.json").write_text("{}")
    (pickle / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    (planted / "link-out").symlink_to("/etc")
    code = planted / "custom-code"
    (code / "unet").mkdir(parents=True)
    (code / "model_index.json").write_text(json.dumps(
        {"_class_name": ["evil_pipeline", "EvilPipeline"], "_diffusers_version": "0.30.0",
         "unet": ["evil_pipeline", "EvilUNet"]}))
    (code / "unet" / "config.json").write_text(json.dumps({"_class_name": "EvilUNet"}))
    (code / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
    mark = code / "EXECUTED"
    source = f"open({str(mark)!r}, 'w').write('code ran')\nclass EvilPipeline: pass\n" \
             "class EvilUNet: pass\n"
    (code / "evil_pipeline.py").write_text(source)
    (code / "unet" / "evil_pipeline.py").write_text(source)
    return planted


def plant_canaries(work: Path, upload_dir: Path) -> tuple[dict[str, Path], dict[str, bytes]]:
    """Secret files outside every served folder; the bytes to look for in every answer."""
    token = secrets.token_hex(16)
    places = {
        "canary-tmp": work / "secret" / "canary.txt",
        "canary-beside-uploads": upload_dir.parent / f"vgen-canary-{token[:8]}.txt",
        "canary-project": REPO / "tests" / "output" / f"vgen-canary-{token[:8]}.txt",
    }
    markers = {}
    for name, path in places.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = f"VGEN-CANARY-{name}-{token}".encode()
        path.write_bytes(secret + b"\n")
        markers[name] = secret
    places["passwd"] = Path("/etc/passwd")
    markers["passwd"] = b"root:x:0:0:"
    return places, markers


def mcp_tools(host: str, port: int, prefix: str = "/gradio_api") -> dict[str, str] | None:
    """{"/generate": tool name, ...} from the MCP schema route; None when MCP is not served."""
    answer = raw_request(host, port, "GET", f"{prefix}/mcp/schema", timeout=30)
    try:
        schema = json.loads(answer.body) if answer.status == 200 else None
    except ValueError:
        schema = None
    if not isinstance(schema, list):
        return None
    return {"/" + str(t.get("meta", {}).get("endpoint_name", "")).lstrip("/"): t.get("name")
            for t in schema if isinstance(t, dict)}


def health(ctx: Ctx) -> tuple[bool, str]:
    """The server still answers /config and (full) still makes a normal image."""
    try:
        answer = ctx.get("/config", timeout=20)
    except OSError as e:
        return False, f"/config: {type(e).__name__}: {e}"
    if answer.status != 200:
        return False, f"/config answered {answer.status}"
    if not ctx.health_full:
        return True, "/config 200"
    try:
        gallery, _, _ = ctx.client.predict(HEALTH_PROMPT, api_name=GEN, steps=1,
                                           seed=ctx.health_seed, randomize_seed=False)
        text = _params(gallery[0])
    except Exception as e:  # noqa: BLE001
        return False, f"generate failed: {type(e).__name__}: {str(e)[:200]}"
    if f"Seed: {ctx.health_seed}," not in text:
        return False, f"generate returned the wrong image: {text[:120]!r}"
    return True, "generate ok"


def run_attack(url: str, *, token_canary: str | None = None, health_full: bool = True,
               model_root: Path | None = None, only: str | None = None,
               log: Callable[[str], None] | None = print) -> dict:
    """Run every case against the app at ``url``; return the report (see ``summary``).
    ``model_root``: a folder the app allows models from (VGEN_MODEL_ROOTS), where hostile
    model folders are planted for the duration of the battery."""
    import httpx
    from gradio_client import Client

    _no_proxy()
    base, host, port = _loopback(url)
    log = log or (lambda _s: None)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vgen-attack-") as tmp:
        work = Path(tmp)
        files = {}
        for name, content in sample_files().items():
            (work / "in").mkdir(exist_ok=True)
            files[name] = work / "in" / name
            files[name].write_bytes(content)
        config = json.loads(raw_request(host, port, "GET", "/config").body)
        prefix = "/" + (config.get("api_prefix") or "/gradio_api").strip("/")
        ctx = Ctx(url=base, host=host, port=port, work=work, files=files, markers={},
                  targets={}, api=base.rstrip("/") + prefix, prefix=prefix, config=config,
                  health_full=health_full)
        ctx.info = json.loads(raw_request(host, port, "GET", f"{prefix}/info").body)
        ctx.mcp_tools = mcp_tools(host, port, prefix)
        probe = ctx.upload("probe.png", files["ok.png"].read_bytes())
        ctx.upload_dir = Path(probe).parent.parent
        ctx.targets, ctx.markers = plant_canaries(work, ctx.upload_dir)
        if token_canary:
            ctx.markers["token"] = token_canary.encode()
        if model_root is not None:
            ctx.planted = plant_models(Path(model_root))
        ctx.client = Client(base, verbose=False, download_files=str(work / "downloads"))
        ctx.http = httpx.Client(timeout=120, trust_env=False)
        reports: list[CaseReport] = []
        try:
            ok, why = health(ctx)
            if not ok:
                raise SystemExit(f"the app does not serve a normal request before the "
                                 f"battery: {why}")
            log(f"MCP: {'served, tools ' + ', '.join(sorted(ctx.mcp_tools.values())) if ctx.mcp_tools is not None else 'not served'}")
            cases = [c for c in build_cases(ctx.planted is not None, ctx.mcp_tools is not None)
                     if not only or re.search(only, c.name, re.I)]
            down = 0
            for case in cases:
                t0 = time.monotonic()
                try:
                    outcome = case.run(ctx)
                except Exception as e:  # noqa: BLE001 - a battery bug or a dropped connection
                    outcome = Outcome(False, f"battery error: {type(e).__name__}: {e}"[:300])
                leaked = [name for name, marker in ctx.markers.items() if marker in outcome.seen]
                healthy, why = health(ctx)
                report = CaseReport(case.name, case.group, outcome.passed and not leaked,
                                    outcome.answer, healthy, why, leaked,
                                    round(time.monotonic() - t0, 2))
                reports.append(report)
                mark = "PASS" if report.passed and healthy else "FAIL"
                log(f"{mark} [{case.group}] {case.name}: {outcome.answer[:150]}".replace("\n", " ")
                    + ("" if healthy else f"  !! server: {why}")
                    + (f"  !! LEAKED {leaked}" if leaked else ""))
                down = 0 if healthy else down + 1
                if down >= 3:
                    log("the server stopped answering: battery aborted")
                    break
        finally:
            ctx.http.close()
            for name in ("canary-beside-uploads", "canary-project"):
                ctx.targets.get(name, Path("/nonexistent")).unlink(missing_ok=True)
            if ctx.planted is not None:
                import shutil

                shutil.rmtree(ctx.planted, ignore_errors=True)
    crashes = sum(1 for r in reports if not r.healthy)
    summary = {
        "url": base,
        "cases": len(reports),
        "passed": sum(1 for r in reports if r.passed and r.healthy),
        "failed": [r.name for r in reports if not (r.passed and r.healthy)],
        "crashes": crashes,
        "leaked_cases": [r.name for r in reports if r.leaked],
        "bytes_leaked": 0 if not any(r.leaked for r in reports) else sum(
            len(ctx.markers[m]) for r in reports for m in r.leaked),
        "seconds": round(time.monotonic() - started, 1),
        "mcp_tools": ctx.mcp_tools,
        "report": [asdict(r) for r in reports],
    }
    log(f"\n{summary['passed']}/{summary['cases']} cases passed, {crashes} server failures, "
        f"{len(summary['leaked_cases'])} responses with canary bytes "
        f"({summary['bytes_leaked']} bytes) in {summary['seconds']} s")
    return summary


# ----------------------------------------------------------------------------------------------
# Load test
# ----------------------------------------------------------------------------------------------


def server_pid(port: int) -> int | None:
    """The process listening on the loopback port (this machine only)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                return conn.pid
    except (psutil.AccessDenied, OSError):
        return None
    return None


def server_rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:  # noqa: BLE001 - gone, or no psutil
        return None


def is_busy(error: BaseException) -> bool:
    """A "busy, try again" answer: Gradio's queue was full (HTTP 503, QueueError)."""
    from gradio_client.utils import QueueError

    return isinstance(error, QueueError) or bool(BUSY_PATTERN.search(str(error)))


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 3)


def run_load(url: str, *, users: int = 16, requests: int = 5, steps: int | None = None,
             model: str | None = None, pid: int | None = None, timeout: float = 1800.0,
             settle_s: float = 3.0, log: Callable[[str], None] | None = print) -> dict:
    from gradio_client import Client

    _no_proxy()
    base, _host, port = _loopback(url)
    log = log or (lambda _s: None)
    pid = pid or server_pid(port)
    lock = threading.Lock()
    counts = {"completed": 0, "busy": 0, "failed": 0, "cross_user": 0}
    latencies: list[float] = []
    errors: list[str] = []
    base_seed = secrets.randbelow(1 << 20) * 1000
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="vgen-load-") as tmp:
        common = dict(api_name=GEN, randomize_seed=False)
        if steps is not None:
            common["steps"] = steps
        if model:
            common["model"] = model
        warm = Client(base, verbose=False, download_files=str(Path(tmp) / "warm"))
        warm.predict(LOAD_PROMPTS[0], seed=1, **common)  # the model is loaded before "before"
        rss_before = server_rss(pid)
        all_seeds = {base_seed + u * 1000 + i: (u, i) for u in range(users)
                     for i in range(requests)}

        def user(u: int) -> None:
            try:
                client = Client(base, verbose=False, download_files=str(Path(tmp) / f"u{u}"))
            except Exception as e:  # noqa: BLE001
                with lock:
                    counts["failed"] += requests
                    errors.append(f"user {u}: could not connect: {e}")
                return
            for i in range(requests):
                if time.monotonic() > deadline:
                    with lock:
                        counts["failed"] += 1
                        errors.append(f"user {u} request {i}: out of time")
                    continue
                seed = base_seed + u * 1000 + i
                prompt = LOAD_PROMPTS[(u + i) % len(LOAD_PROMPTS)]
                t0 = time.perf_counter()
                try:
                    gallery, _info, _notice = client.predict(prompt, seed=seed, **common)
                except Exception as e:  # noqa: BLE001
                    text = f"{type(e).__name__}: {e}"
                    with lock:
                        if is_busy(e):
                            counts["busy"] += 1
                        else:
                            counts["failed"] += 1
                            errors.append(f"user {u} request {i}: {text[:200]}")
                    continue
                elapsed = time.perf_counter() - t0
                verdict = "completed"
                for item in gallery or [None]:
                    text = _params(item) if item else ""
                    found = re.search(r"Seed: (\d+),", text)
                    if text.startswith(prompt + "\n") and found and int(found.group(1)) == seed \
                            and (item.get("caption") in (None, f"seed {seed}")):
                        continue
                    other = int(found.group(1)) if found else None
                    verdict = "cross_user" if other in all_seeds and other != seed else "failed"
                    with lock:
                        errors.append(f"user {u} request {i}: got seed {other}, "
                                      f"parameters {text[:80]!r}")
                    break
                with lock:
                    counts[verdict] += 1
                    if verdict == "completed":
                        latencies.append(elapsed)

        started = time.monotonic()
        threads = [threading.Thread(target=user, args=(u,), name=f"load-user-{u}", daemon=True)
                   for u in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
        wall = time.monotonic() - started
        time.sleep(settle_s)
        rss_after = server_rss(pid)
    total = users * requests
    summary = {
        "url": base, "users": users, "requests_per_user": requests, "total": total,
        **counts,
        "unaccounted": total - sum(counts.values()),
        "p50_s": _percentile(latencies, 0.5), "p95_s": _percentile(latencies, 0.95),
        "wall_s": round(wall, 1),
        "throughput_per_s": round(counts["completed"] / wall, 2) if wall else None,
        "server_pid": pid,
        "rss_before_mb": round(rss_before / 2**20, 1) if rss_before else None,
        "rss_after_mb": round(rss_after / 2**20, 1) if rss_after else None,
        "rss_change": (round(rss_after / rss_before - 1, 4)
                       if rss_before and rss_after else None),
        "errors": errors[:20],
    }
    log(f"{users} users x {requests} requests: {counts['completed']} completed, "
        f"{counts['busy']} rejected busy, {counts['failed']} failed, {counts['cross_user']} "
        f"cross-user; p50 {summary['p50_s']} s, p95 {summary['p95_s']} s, wall {summary['wall_s']}"
        f" s; server RSS {summary['rss_before_mb']} -> {summary['rss_after_mb']} MB "
        f"({'n/a' if summary['rss_change'] is None else format(summary['rss_change'], '+.1%')})")
    for line in errors[:10]:
        log("  " + line)
    return summary


SESSION_BUSY = re.compile(r"already has \d+ jobs? queued or running", re.I)


def run_flood(url: str, *, jobs: int = 50, steps: int | None = None, max_wait: int = 2,
              model: str | None = None, timeout: float = 900.0,
              log: Callable[[str], None] | None = print) -> dict:
    """Fairness: client A (one ``gradio_client.Client``, so one session) submits ``jobs``
    generations at once, then client B submits one. Counts A's jobs that finished after B's
    submit and before B started (its first denoising step; B's finish when no step was seen), A's jobs refused at once as session-busy, and A's refused
    otherwise (server busy, queue full). Passes when B finished with its own image after at
    most ``max_wait`` of A's jobs."""
    from gradio_client import Client

    _no_proxy()
    base, _host, _port = _loopback(url)
    log = log or (lambda _s: None)
    common = dict(api_name=GEN, randomize_seed=False)
    if steps is not None:
        common["steps"] = steps
    if model:
        common["model"] = model
    lock = threading.Lock()
    a_done_at: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="vgen-flood-") as tmp:
        a = Client(base, verbose=False, download_files=str(Path(tmp) / "a"))
        b = Client(base, verbose=False, download_files=str(Path(tmp) / "b"))
        b.predict(LOAD_PROMPTS[0], seed=1, **common)  # warm: the model is loaded, B is idle

        def finished(i: int):
            def record(_future) -> None:
                with lock:
                    a_done_at[i] = time.monotonic()
            return record

        flood = []
        for i in range(jobs):
            job = a.submit(LOAD_PROMPTS[1], seed=10_000 + i, **common)
            job.future.add_done_callback(finished(i))
            flood.append(job)
        deadline = time.monotonic() + 60  # each of A's requests has been answered or admitted
        waiting_codes = {"STARTING", "JOINING_QUEUE"}
        while time.monotonic() < deadline and any(
                not j.done() and j.status().code.name in waiting_codes for j in flood):
            time.sleep(0.02)
        time.sleep(0.5)  # refusals of the last ones arrive
        b_seed = 777_777
        b_submit = time.monotonic()
        job_b = b.submit(LOAD_PROMPTS[2], seed=b_seed, **common)
        b_start = None
        deadline = b_submit + timeout
        while not job_b.done() and time.monotonic() < deadline:
            if b_start is None:
                for unit in job_b.status().progress_data or []:
                    # its engine work began ("denoising", unit steps; the fair queue's
                    # "waiting for the engine" also counts in Gradio's default unit, steps)
                    desc = (unit.desc or "").lower()
                    if "denois" in desc:
                        b_start = time.monotonic()
                        break
            time.sleep(0.01)
        b_done = time.monotonic()
        b_error, b_ok = None, False
        try:
            gallery, _info, _notice = job_b.result(timeout=max(1.0, deadline - time.monotonic()))
            found = re.search(r"Seed: (\d+),", _params(gallery[0]))
            b_ok = bool(found) and int(found.group(1)) == b_seed
            if not b_ok:
                b_error = f"B got another image: {_params(gallery[0])[:120]!r}"
        except Exception as e:  # noqa: BLE001
            b_error = f"{type(e).__name__}: {str(e)[:300]}"
        outcome = {"completed": 0, "session_busy": 0, "busy": 0, "failed": 0, "cancelled": 0}
        errors: list[str] = []
        for job in flood:
            if not job.done():
                job.cancel()
                outcome["cancelled"] += 1
                continue
            error = job.exception()
            if error is None:
                outcome["completed"] += 1
            elif SESSION_BUSY.search(str(error)):
                outcome["session_busy"] += 1
            elif is_busy(error):
                outcome["busy"] += 1
            else:
                outcome["failed"] += 1
                errors.append(f"{type(error).__name__}: {str(error)[:200]}")
        with lock:
            done_times = [t for i, t in a_done_at.items() if flood[i].exception() is None]
    until = b_start if b_start is not None else b_done
    a_before_b_start = sum(1 for t in done_times if b_submit < t <= until)
    a_before_b_done = sum(1 for t in done_times if b_submit < t <= b_done)
    passed = b_ok and a_before_b_start <= max_wait
    summary = {
        "url": base, "jobs": jobs, "max_wait": max_wait, **{f"a_{k}": v for k, v in outcome.items()},
        "a_done_after_b_submit_before_b_start": a_before_b_start,
        "a_done_after_b_submit_before_b_done": a_before_b_done,
        "b_start_seen": b_start is not None, "b_wait_s": round(until - b_submit, 2),
        "b_ok": b_ok, "b_error": b_error, "passed": passed, "errors": errors[:10],
    }
    log(f"flood: A submitted {jobs}: {outcome['completed']} completed, {outcome['session_busy']} "
        f"refused session-busy at once, {outcome['busy']} refused busy, {outcome['failed']} "
        f"failed, {outcome['cancelled']} cancelled unfinished; B "
        + ("finished" if b_ok else f"failed ({b_error})")
        + f" after {a_before_b_start} of A's jobs (before B's "
        f"{'start' if b_start is not None else 'finish'}; {a_before_b_done} before B's finish), "
        f"{summary['b_wait_s']} s: " + ("PASS" if passed else f"FAIL (at most {max_wait})"))
    for line in errors[:5]:
        log("  " + line)
    return summary


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    attack = sub.add_parser("attack", help="the attack battery")
    attack.add_argument("--url", required=True)
    attack.add_argument("--token-canary", help="the HF_TOKEN the app was started with")
    attack.add_argument("--light", action="store_true",
                        help="health check = /config only (default: a real generation)")
    attack.add_argument("--only", help="regex: run the matching cases only")
    attack.add_argument("--model-root", type=Path,
                        help="a folder in the app's VGEN_MODEL_ROOTS: hostile model folders "
                             "are planted there during the battery (more model cases)")
    attack.add_argument("--json", type=Path, help="write the full report here")
    load = sub.add_parser("load", help="concurrent users generating")
    load.add_argument("--url", required=True)
    load.add_argument("--users", type=int, default=16)
    load.add_argument("--requests", type=int, default=5)
    load.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    load.add_argument("--model", help="model reference (default: the app's)")
    load.add_argument("--pid", type=int, help="the server's process id (default: found by port)")
    load.add_argument("--timeout", type=float, default=1800.0)
    load.add_argument("--json", type=Path)
    load.add_argument("--flood", action="store_true",
                      help="the fairness case instead: one client submits --flood-jobs at once, "
                           "then another submits one, which must wait for at most --max-wait "
                           "of the first one's jobs")
    load.add_argument("--flood-jobs", type=int, default=50)
    load.add_argument("--max-wait", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "attack":
        summary = run_attack(args.url, token_canary=args.token_canary,
                             health_full=not args.light, model_root=args.model_root,
                             only=args.only)
        ok = not summary["failed"] and not summary["crashes"] and not summary["leaked_cases"]
    elif args.flood:
        summary = run_flood(args.url, jobs=args.flood_jobs, steps=args.steps,
                            max_wait=args.max_wait, model=args.model, timeout=args.timeout)
        ok = summary["passed"]
    else:
        summary = run_load(args.url, users=args.users, requests=args.requests, steps=args.steps,
                           model=args.model, pid=args.pid, timeout=args.timeout)
        within = summary["rss_change"] is None or summary["rss_change"] <= 0.10
        ok = not summary["failed"] and not summary["cross_user"] and \
            not summary["unaccounted"] and within
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
