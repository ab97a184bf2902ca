"""Schemathesis against the served ``/openapi.json``: no 5xx, every status documented, every
response body matching its schema, for a trader and for an admin. Bounded (a few examples per
operation, fixed seed) to keep CI fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import Api, Server

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def _run_schemathesis(server: Server, token: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    st = Path(sys.executable).with_name("st")
    return subprocess.run(
        [str(st), "run", f"{server.url}/openapi.json", "--checks", CHECKS, "--max-examples", "6",
         "--phases", "examples,fuzzing", "--seed", "20261122", "--workers", "1", "--no-shrink",
         "--generation-database", "none", "--request-timeout", "30", "--no-color",
         "--header", f"Authorization: Bearer {token}", "--exclude-path", "/v1/auth/token"],
        cwd=tmp, capture_output=True, text=True, timeout=900,
    )


def test_openapi_document_holds_for_a_trader_and_an_admin(server: Server, anon: Api, tmp_path: Path) -> None:
    for username in ("alice", "admin"):
        token = anon.login(username, username).token
        assert token is not None
        r = _run_schemathesis(server, token, tmp_path)
        assert r.returncode == 0, f"schemathesis as {username}:\n{r.stdout[-20000:]}\n{r.stderr[-3000:]}"


def test_openapi_document_is_served_with_swagger(anon: Api) -> None:
    spec = anon.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] \
        == "/v1/auth/token"
    assert "swagger-ui" in anon.get("/docs").text
    order = spec["components"]["schemas"]["OrderCreate"]
    assert order["additionalProperties"] is False
    assert order["properties"]["price"]["anyOf"][0]["type"] == "string"
