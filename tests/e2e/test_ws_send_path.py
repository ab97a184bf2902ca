"""Under the uvicorn this project pins, a WebSocket connection writes its frames straight to
the transport (``api.routers.ws.direct_protocol``), not through ASGI ``send`` per message.

The direct path reaches into uvicorn's protocol object, and falls back to ASGI ``send`` when
that object does not look as expected — silently, and several times slower per subscriber
(docs/performance.md). Given the served app with its defaults, when a client connects, then
``/metrics`` counts it on the direct path; with ``SPOTEX_WS_DIRECT=0``, on the ASGI path. So an
upgrade that breaks the direct path breaks this test instead of the fan-out's figures.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import start_server, stop_server
from tests.e2e.ws_client import WsClient, is_type


def connections_by_path(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    return {path: float(n) for path, n in
            re.findall(r'spotex_ws_connections_total\{path="(\w+)"\} ([\d.e+]+)', text)}


@pytest.mark.parametrize(("env", "path"), [({}, "direct"), ({"SPOTEX_WS_DIRECT": "0"}, "asgi")])
def test_connections_take_the_direct_path_by_default(tmp_path: Path, env: dict[str, str], path: str) -> None:
    server = start_server(tmp_path / "data", env)
    try:
        async def connect_twice() -> None:
            for n in range(2):
                async with WsClient(server.url) as ws:
                    await ws.send(op="ping", id=n)
                    await ws.expect(is_type("pong"))

        asyncio.run(connect_twice())
        assert connections_by_path(server.url) == {path: 2.0}
    finally:
        assert stop_server(server) == 0
