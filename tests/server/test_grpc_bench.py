"""``d2v bench serve --protocol grpc``: one run reports the engine, HTTP and gRPC phases and gRPC vs HTTP (no
timings asserted: a benchmark, never a test of speed)."""

from __future__ import annotations

import json

import pytest

from d2v.cli import main


@pytest.mark.parametrize("modality", ["text", "image"])
def test_bench_serve_grpc_reports_grpc_next_to_http(store, tmp_path, capsys, modality):
    out = tmp_path / "bench.json"
    argv = ["bench", "serve", "--store", str(store), "--model", f"tiny-{modality}", "--engine", "onnxruntime",
            "--requests", "6", "--concurrency", "2", "--items", "2", "--warmup", "1", "--protocol", "grpc",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    for phase in ("engine", "gateway", "grpc"):
        r = result[phase]
        assert (r["requests"], r["errors"]) == (6, 0), r.get("first_error")
        assert r["items_per_s"] == pytest.approx(2 * r["requests_per_s"])
    x = result["grpc_vs_http"]
    assert x["requests_per_s"] == pytest.approx(result["grpc"]["requests_per_s"] / result["gateway"]["requests_per_s"])
    assert x["p50_ms"] == pytest.approx(result["grpc"]["p50_ms"] / result["gateway"]["p50_ms"])
    table = capsys.readouterr().out
    assert "grpc/http" in table and "\ngrpc " in table
