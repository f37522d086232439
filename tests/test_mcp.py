"""The app's endpoints as MCP tools (Gradio's own MCP server, streamable HTTP at
``/gradio_api/mcp/``): listed through an MCP client over loopback, described by the endpoint
docstrings, and text to image called through it. Runs against ``conftest.hardened_app`` (the real
``python app.py``, tiny model, MCP on)."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import re

import pytest

pytest.importorskip("mcp", reason="the MCP client (pip install 'gradio[mcp]') is needed")

# api name -> the start of its docstring's first line (what the tool description starts with)
ENDPOINTS = {
    "generate": "Text to image",
    "edit": "Edit an image",
    "attention": "Text to image with its per-word cross-attention maps",
    "compare": "Compare",
    "expand": "Expand a prompt",
    "status": "What this server runs",
}


def _mcp_url(app) -> str:
    return app.url + "gradio_api/mcp/"


async def _session(app, work):
    """Run ``work(session)`` in an initialised MCP client session over streamable HTTP."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(_mcp_url(app), timeout=60, sse_read_timeout=300) as (r, w, _):
        async with ClientSession(r, w) as session:
            await session.initialize()
            return await work(session)


def _tools(app) -> dict:
    """{api name: Tool}, matched through Gradio's schema route (tool names follow the handler
    functions' names, which may change; the api names are the contract)."""
    import httpx

    schema = httpx.get(_mcp_url(app) + "schema", timeout=30, trust_env=False).json()
    by_name = {t["name"]: t["meta"]["endpoint_name"].lstrip("/") for t in schema}

    async def work(session):
        return (await session.list_tools()).tools

    listed = asyncio.run(_session(app, work))
    return {by_name[t.name]: t for t in listed if t.name in by_name}


@pytest.fixture(scope="module")
def tools(hardened_app):
    assert hardened_app.mcp
    return _tools(hardened_app)


def test_every_endpoint_is_a_tool(tools, hardened_app):
    assert set(ENDPOINTS) <= set(tools), sorted(t.name for t in tools.values())
    names = {api: t.name for api, t in tools.items()}
    print("MCP tool names:", json.dumps(names))  # reported to whoever writes the docstrings
    for api, tool in tools.items():
        assert re.fullmatch(r"[A-Za-z0-9_]{1,128}", tool.name), tool.name


def test_descriptions_come_from_the_endpoint_docstrings(tools):
    for api, first_line in ENDPOINTS.items():
        tool = tools[api]
        assert tool.description.startswith(first_line), (api, tool.description[:200])
        assert "Returns:" in tool.description, (api, "no Returns section reached MCP")
    generate = tools["generate"].inputSchema["properties"]
    assert generate["prompt"]["description"] == "what to draw"
    assert "seed" in generate and "description" in generate["seed"]
    # every parameter the docstring documents arrives with its description
    for api, tool in tools.items():
        undocumented = [name for name, prop in tool.inputSchema.get("properties", {}).items()
                        if not prop.get("description")]
        assert not undocumented, (api, undocumented)


def test_descriptions_are_whole_sentences(tools):
    """Gradio's docstring parser keeps the first line of each parameter and joins the lines of
    "Returns:" with ", ": a wrapped parameter line loses its continuation and a wrapped Returns
    line gains a stray comma. MCP clients read these texts; they must not be cut off."""
    problems = []
    for api, tool in tools.items():
        if re.search(r",,|\b(of|the|a|an|and|or|in|its|with|for|to|it),\s", tool.description):
            problems.append(f"{api}: Returns wrapped: {tool.description[:160]!r}")
        for name, prop in tool.inputSchema.get("properties", {}).items():
            text = prop.get("description", "")
            if re.search(r"(,|;|\bthe|\bor|\band|\bfor|\ba|\bof|\(\w*)$", text.strip()):
                problems.append(f"{api}.{name}: cut off: {text!r}")
    assert not problems, "\n".join(problems)


def test_text_to_image_through_mcp(hardened_app, tools):
    from PIL import Image

    name = tools["generate"].name
    arguments = {"prompt": "a red circle to the left of a blue square", "steps": 2, "seed": 11,
                 "randomize_seed": False}

    async def work(session):
        return await session.call_tool(name, arguments)

    result = asyncio.run(_session(hardened_app, work))
    assert not result.isError, result.content
    images = [c for c in result.content if c.type == "image"]
    if images:  # an ImageContent (a single-image output)
        import base64

        data = base64.b64decode(images[0].data)
    else:  # a gallery comes back as text naming each image's URL on this server
        import httpx

        text = " ".join(c.text for c in result.content if c.type == "text")
        urls = re.findall(r"https?://[^\s'\"]+\.png", text)
        assert urls, text[:500]
        assert urls[0].startswith(hardened_app.url), urls[0]
        data = httpx.get(urls[0], timeout=30, trust_env=False).content
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (64, 64)
        params = image.info.get("parameters", "")
    assert params.startswith(arguments["prompt"] + "\n") and "Seed: 11," in params, params[:200]


def test_a_bad_argument_is_a_clear_tool_error(hardened_app, tools):
    name = tools["generate"].name

    async def work(session):
        return await session.call_tool(name, {"prompt": "a red circle", "steps": 100000})

    result = asyncio.run(_session(hardened_app, work))
    assert result.isError
    assert "steps must be from 1 to" in " ".join(c.text for c in result.content if c.type == "text")


def test_the_docstring_parser_is_the_one_gradio_uses():
    """The checks above assume Gradio's parser (gradio.utils.get_function_description): one
    line per parameter after "Parameters:", everything after "Returns:" as return items."""
    from gradio.utils import get_function_description

    def sample(prompt: str, steps: int = 1):
        """Make a thing.

        Parameters:
            prompt: what to draw
            steps: how many
                steps (a continuation line)
        Returns:
            one image
        """

    description, params, returns = get_function_description(sample)
    assert description == "Make a thing." and returns == ["one image"]
    assert params == {"prompt": "what to draw", "steps": "how many"}  # the continuation is lost
    assert "prompt" in inspect.signature(sample).parameters
