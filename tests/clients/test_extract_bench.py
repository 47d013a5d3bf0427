"""``d2v bench extract`` end to end on a tiny corpus (the figures are the bench's; this checks it runs and
reports what it promises: every engine's items/s against the in-process reference, RSS at two sizes)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_bench_extract_reports_engines_and_rss(model_store):
    from d2v.workflows.bench_extract import ExtractBenchOptions, bench_extract, format_markdown

    opts = ExtractBenchOptions(
        store=model_store, model="tiny-text", items=300, rss_sizes=(100, 400), engines=("local", "server")
    )
    result = bench_extract(opts)
    engines = [r["engine"] for r in result["throughput"]]
    assert engines == ["in-process engine (reference)", "--engine onnxruntime", "--engine server (HTTP)"]
    assert all(r["items_per_s"] > 0 for r in result["throughput"])
    assert [r["rows"] for r in result["rss"]] == [100, 400] and all(r["driver_peak_rss_mb"] > 0 for r in result["rss"])
    table = format_markdown(result)
    assert "| --engine server (HTTP) |" in table and "| 400 |" in table
