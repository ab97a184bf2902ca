"""The shell blocks of docs/api.md work when pasted, in order, against ``spotex serve --demo``.

Given the real server with its demo data, when every ```sh block of the page after the first
(which starts the server) runs in one bash session, as a reader would paste them, then each
command succeeds: ``curl`` is made to fail on any HTTP error status (``--fail-with-body``), so a
block that answers 4xx/5xx, a field the ``python3`` one-liners cannot find, or a changed route
fails this test with the block's output.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.conftest import ROOT, start_server, stop_server

PAGE = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)


def shell_blocks() -> list[str]:
    return BLOCK.findall(PAGE.read_text())


def test_the_api_page_has_the_blocks_this_test_runs() -> None:
    blocks = shell_blocks()
    assert blocks[0].startswith("spotex serve --demo"), "the page starts with how to run the server"
    assert len(blocks) >= 8 and all("curl" in b for b in blocks[1:])


def test_every_shell_block_of_the_api_page_works_when_pasted(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", {}, ("--demo",))
    try:
        blocks = shell_blocks()[1:]
        script = "\n".join([
            "set -euo pipefail",
            'curl() { command curl --fail-with-body --show-error "$@"; echo; }',
            *blocks,
        ]).replace("API=http://127.0.0.1:8000", f"API={server.url}")
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (
            f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
        out = done.stdout
        # what the page says the reader will see
        assert '"username":"alice"' in out.replace(" ", "")          # GET /v1/me
        assert '"status":"received"' in out.replace(" ", "")         # an order without wait
        assert '"status":"cancelled"' in out.replace(" ", "")        # the cancel with wait
        assert '"bids"' in out and '"asks"' in out                   # the book
    finally:
        assert stop_server(server) == 0
