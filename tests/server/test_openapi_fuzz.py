"""Schema fuzzing of the real gateway (uvicorn, ONNX Runtime on the tiny models) with schemathesis' CLI.

Checks: no 5xx; every status, content type, header and body is the one ``/openapi.json`` declares; requests
that violate the declared schema are refused (so the schema is no looser than the server where the server
is strict); undeclared methods get 405 with ``Allow``. Not checked: schemathesis' "positive data acceptance",
because a schema-valid string is not a decodable image or audio file, and vocabulary, token and pixel limits
belong to each model (those are 400 / 413 answers by design).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import live_server, make_settings, record_reliability

from d2v.server.app import create_app

pytestmark = pytest.mark.slow

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
    "response_headers_conformance,negative_data_rejection,unsupported_method"
)


def _schemathesis(base: str, cwd: Path, *extra: str) -> tuple[int, str]:
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "run", f"{base}/openapi.json", "--checks", CHECKS, "--max-examples", "40"]
    cmd += ["--seed", "20261201", "--no-color", "--request-timeout", "30", *extra]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("api_key", [None, "fuzz-key"], ids=["open", "with-api-key"])
def test_schema_fuzzing_finds_no_5xx_and_only_declared_answers(store, tmp_path, api_key):
    settings = make_settings(store, api_keys=[api_key] if api_key else [])
    extra = ("--header", f"Authorization: Bearer {api_key}") if api_key else ()
    with live_server(create_app(settings)) as (base, _):
        code, output = _schemathesis(base, tmp_path, *extra)
    summary = re.search(r"(\d+) generated, (\d+) (passed|found)", output)
    print(f"schemathesis ({'api key' if api_key else 'no key'}): {summary.group(0) if summary else '?'}")
    assert code == 0, output[-6000:]
    assert summary and int(summary.group(1)) >= 100, output[-2000:]  # it really ran cases
    record_reliability(
        f"OpenAPI schema fuzzing ({'with' if api_key else 'without'} an API key)",
        tried=f"schemathesis, every operation of /openapi.json: {summary.group(1)} generated requests",
        faults="schema-valid and schema-violating bodies, undeclared methods",
        outcome="no 5xx; statuses, content types, headers and bodies as declared; invalid bodies refused",
        figures=f"{summary.group(0)}",
    )
