"""Request checks before Gradio reads a request: an ASGI middleware (``RequestGuard``).

Gradio refuses some hostile inputs itself, but says nothing useful when it does: with
``show_error`` off its queue answers a bare ``{"error": null}`` (gradio_client: "The upstream
Gradio app has not enabled verbose error reporting") and its own texts would list the server's
folders. So the JSON body of every API route (``queue/join``, ``call/<api>``, ``run/<api>``,
the MCP route, ...; at most ``VGEN_MAX_BODY_SIZE`` bytes, ``server.BodySizeLimit`` runs first)
is read here, and refused with a message that names the input and the problem when it holds:

- NaN, Infinity or a number too large for a float (JSON has none of them; Python's json and
  Gradio accept them, and a NaN ends up as an unexplained error);
- nesting deeper than ``MAX_DEPTH`` (the MCP package recursed on it until a RecursionError);
- a file (Gradio's ``FileData``) whose path lies outside Gradio's upload/cache folder
  (``REFUSED_FILE``), or an http(s) URL to a private, loopback, link-local or unresolvable
  host (``REFUSED_URL``, the SSRF case). Gradio's own checks (``_check_allowed``, safehttpx)
  stay as the second line.

The answer is what gradio_client and the browser show best: on the event routes a 422 in
Gradio's own validation format (one entry per input, the bad ones ``is_valid: false`` with the
parameter's name; gradio_client raises ``ValidationError`` with the message, the browser shows
it on the input); on the MCP route a JSON-RPC error (HTTP 400); elsewhere 400 with a
``detail``. No answer echoes a server folder or the value sent.

Also refused (404): ``run/<api>`` and ``api/<api>`` for queued events are turned off with
``queue(api_open=False)`` in ``server.queue_settings`` (Gradio's own switch), not here.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import logging
import math
import os
import re
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger("vgen.ui")

REFUSED_FILE = ("a file named in this request was not uploaded to this app (or lies outside its "
                "upload folder), so it cannot be used; upload it first")
REFUSED_URL = ("a file URL in this request points to a private, loopback or unresolvable address; "
               "such URLs are not fetched")
MAX_DEPTH = 64  # the app's own values (editor, gallery, FileData) nest about 6 deep
RESOLVE_TIMEOUT_S = 5.0
# The routes whose JSON body carries an event's inputs (the rest get the generic checks only).
_EVENT_ROUTE = re.compile(r"/(?:queue/join|call(?:/v2)?/(?P<call>[^/]+)|(?:run|api)/(?P<run>[^/]+))/?$")


class Refused(Exception):
    """A request refused before Gradio sees it: ``message`` for the caller, ``where`` the
    input (a parameter name, a position or a key) it is about."""

    def __init__(self, message: str, where: Any = None):
        super().__init__(message)
        self.message, self.where = message, where


class _NotFinite(str):
    """What the parser puts where the JSON has NaN, Infinity or 1e999 (found afterwards, so the
    message can name the input)."""


def _constant(token: str) -> _NotFinite:
    return _NotFinite(token)


def _float(token: str):
    value = float(token)
    return value if math.isfinite(value) else _NotFinite(token)


def parse(body: bytes) -> Any:
    """The JSON value of ``body``; ``ValueError`` when it is not JSON (Gradio answers that
    itself); ``Refused`` when it nests too deeply or has a number that is not one."""
    try:
        return json.loads(body, parse_constant=_constant, parse_float=_float)
    except RecursionError:
        raise Refused(f"the request's JSON nests too deeply (at most {MAX_DEPTH} levels)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError as e:  # an integer of more than 4300 digits
        if "digits" not in str(e):
            raise
        raise Refused("the request's JSON holds a number with too many digits") from None


def _walk(value: Any, where: Any, found: list[tuple[Any, Any]]) -> None:
    """Depth, non-finite numbers, and FileData dicts (appended to ``found`` with their input),
    iteratively: a deep value must not recurse here either."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Refused(f"the request's JSON nests too deeply (at most {MAX_DEPTH} levels)", where)
        if isinstance(item, _NotFinite):
            raise Refused(f"must be a finite number, got {item[:20]} (JSON has no NaN or "
                          f"Infinity)", where)
        if isinstance(item, dict):
            meta = item.get("meta")
            if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
                found.append((item.get("path"), where))
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_global and not ip.is_multicast


async def _check_url(url: str, where: Any) -> None:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    if not host:
        raise Refused(REFUSED_URL, where)
    try:
        addresses = [host] if _is_ip(host) else [
            info[4][0] for info in await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, None), RESOLVE_TIMEOUT_S)]
        public = bool(addresses) and all(_public(a) for a in addresses)
    except (OSError, ValueError, asyncio.TimeoutError):
        public = False
    if not public:
        raise Refused(REFUSED_URL, where)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def check_files(found: list[tuple[Any, Any]], upload_folder: str) -> None:
    """Each FileData path: inside Gradio's upload/cache folder, or a URL to a public host."""
    for path, where in found:
        if not isinstance(path, str) or not path or "\x00" in path:
            raise Refused(REFUSED_FILE, where)
        if path.startswith(("http://", "https://")):
            await _check_url(path, where)
        elif not _inside(path, upload_folder):
            raise Refused(REFUSED_FILE, where)


async def check(value: Any, upload_folder: str | None) -> None:
    """Every check of a parsed body; ``upload_folder`` None: no file checks (not an event
    route). The input each problem is about is its key in ``data`` (a position) or in the body."""
    found: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        data = value.get("data")
        for key, item in value.items():
            if key == "data" and isinstance(data, list):
                for index, entry in enumerate(data):
                    _walk(entry, index, found)
            else:
                _walk(item, key, found)
    else:
        _walk(value, None, found)
    if upload_folder is not None:
        await check_files(found, upload_folder)


# ---- the answers ---------------------------------------------------------------------------


def _input_names(fn) -> list[str]:
    """The event's input names, as Gradio names them in its own validation answers."""
    names = list(getattr(fn, "input_parameter_names", None) or [])
    if not names and getattr(fn, "fn", None) is not None:
        try:
            names = list(inspect.signature(fn.fn).parameters)
        except (TypeError, ValueError):
            names = []
    return names


def _event_fn(scope, route: re.Match, value: Any):
    """The BlockFunction a request to an event route is for, or None."""
    app = scope.get("app")
    try:
        blocks = app.get_blocks()
    except Exception:  # noqa: BLE001 - not Gradio's app (unit tests): no names
        return None
    api_name = route.group("call") or route.group("run")
    fns = getattr(blocks, "fns", {})
    if api_name is None:
        index = value.get("fn_index") if isinstance(value, dict) else None
        return fns.get(index) if isinstance(index, int) else None
    return next((fn for fn in fns.values() if getattr(fn, "api_name", None) == api_name), None)


def _named(name: Any, message: str) -> str:
    """'steps must be a finite number, ...': a message about one input starts with its name."""
    return f"{name} {message}" if message.startswith("must") and name is not None else message


def validation_answer(refused: Refused, fn) -> tuple[int, dict]:
    """422 in Gradio's validation format: one entry per input, the refused one named."""
    names = _input_names(fn) if fn is not None else []
    count = len(getattr(fn, "inputs", None) or []) if fn is not None else 0
    where = refused.where
    index = where if isinstance(where, int) else (names.index(where) if where in names else None)
    name = (names[index] if index is not None and index < len(names) else
            where if isinstance(where, str) else
            f"parameter_{index}" if index is not None else "request")
    bad = {"__type__": "validate", "is_valid": False, "parameter_name": name,
           "message": _named(name, refused.message)}
    if index is None or index >= count:
        return 422, {"detail": [bad]}
    detail = [{"is_valid": True, "message": ""} for _ in range(count)]
    detail[index] = bad
    return 422, {"detail": detail}


def mcp_answer(refused: Refused, value: Any) -> tuple[int, dict]:
    request_id = value.get("id") if isinstance(value, dict) else None
    if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
        request_id = None
    message = _named(refused.where if isinstance(refused.where, str) else "a value",
                     refused.message)
    return 400, {"jsonrpc": "2.0", "id": request_id,
                 "error": {"code": -32600, "message": f"invalid request: {message}"}}


class RequestGuard:
    """ASGI middleware: checks the JSON body of POST requests under ``prefix`` (see the module
    docstring) and answers the refused ones itself; others go on with their body replayed."""

    def __init__(self, app, prefix: str = "/gradio_api", upload_folder: str | None = None):
        self.app, self.prefix = app, prefix.rstrip("/")
        self.upload_folder = upload_folder

    def _folder(self) -> str:
        if self.upload_folder is None:
            from gradio.utils import get_upload_folder

            self.upload_folder = str(get_upload_folder())
        return self.upload_folder

    def _wanted(self, scope) -> bool:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return False
        path = scope.get("path", "")
        if not path.startswith(self.prefix + "/"):
            return False
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        return not content_type.startswith(("multipart/", "application/x-www-form-urlencoded"))

    async def __call__(self, scope, receive, send):
        if not self._wanted(scope):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left (or BodySizeLimit's 413)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        answer = await self._answer(scope, body)
        if answer is not None:
            return await _send_json(send, *answer)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _answer(self, scope, body: bytes) -> tuple[int, dict] | None:
        path = scope["path"][len(self.prefix):]
        route = _EVENT_ROUTE.search(path)
        value = None
        try:
            value = parse(body)
            await check(value, self._folder() if route else None)
        except Refused as refused:
            logger.info("refused %s: %s", scope["path"][:80], refused.message)
            if path.startswith("/mcp"):
                return mcp_answer(refused, value)
            if route:
                return validation_answer(refused, _event_fn(scope, route, value))
            return 400, {"detail": refused.message}
        except ValueError:  # not JSON: Gradio (or the MCP package) answers it
            return None
        return None


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
