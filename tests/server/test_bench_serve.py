"""``d2v bench serve`` smoke test: a handful of requests on the tiny models, the JSON's fields (no timings)."""

from __future__ import annotations

import json

import pytest

from d2v.cli import main

FIELDS = ("requests", "errors", "seconds", "requests_per_s", "p50_ms", "p90_ms", "p99_ms")


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_bench_serve_reports_both_phases_and_ratios(store, tmp_path, capsys, modality):
    out = tmp_path / "bench.json"
    argv = ["bench", "serve", "--store", str(store), "--model", f"tiny-{modality}", "--requests", "6",
            "--concurrency", "2", "--items", "2", "--warmup", "1", "--duration", "60", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert (result["model"], result["modality"]) == (f"tiny-{modality}", modality)
    # --engine auto (the default) reports what it chose and why; the tiny models offer fp32 only.
    assert (result["engine_kind"], result["variant"]) == (result["selection"]["engine"], "fp32")
    assert result["selection"]["candidates"][0]["engine"] == "onnxruntime"
    assert (result["items_per_request"], result["concurrency"], result["max_requests"]) == (2, 2, 6)
    for phase in ("engine", "gateway"):
        r = result[phase]
        assert set(FIELDS) <= set(r)
        assert (r["requests"], r["errors"]) == (6, 0), r.get("first_error")  # bounded: exactly N, none failed
        assert r["requests_per_s"] > 0 and r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    ratios = result["gateway_vs_engine"]
    assert set(ratios) == {"requests_per_s", "p50_ms", "p90_ms", "p99_ms"}
    assert ratios["requests_per_s"] == pytest.approx(
        result["gateway"]["requests_per_s"] / result["engine"]["requests_per_s"]
    )
    table = capsys.readouterr().out
    assert "gateway/eng" in table and f"tiny-{modality}" in table


def test_bench_serve_stops_at_the_duration(store, tmp_path):
    """The time bound ends a phase before the request bound."""
    out = tmp_path / "bench.json"
    argv = ["bench", "serve", "--store", str(store), "--model", "tiny-text", "--requests", "1000000",
            "--concurrency", "1", "--warmup", "0", "--duration", "0.3", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    for phase in ("engine", "gateway"):
        assert 0 < result[phase]["requests"] < 1_000_000 and result[phase]["errors"] == 0


def test_bench_serve_is_registered():
    from d2v.cli import build_parser

    args = build_parser().parse_args(["bench", "serve", "--requests", "3"])
    assert args.requests == 3 and args.func.__name__ == "_bench_serve"
