"""``d2v bench peers`` end to end on the tiny size (text, a short gateway run): the report's fields, its
arithmetic and the independent HF reference. No timing thresholds: speed is the benchmark's business."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from d2v.cli import main
from d2v.workflows.bench_peers_report import BEGIN_MARK, END_MARK, update_docs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("peers")
    docs = out / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nkept\n")
    argv = ["bench", "peers", "--size", "tiny", "--modalities", "text", "--repeats", "1", "--out", str(out)]
    argv += ["--gateway-requests", "6", "--gateway-duration", "2", "--no-progress", "--update-docs", str(docs)]
    assert main(argv) == 0
    return out, json.loads((out / "peers.json").read_text()), docs


def test_report_fields_and_arithmetic(run):
    out, result, _ = run
    assert result["size"] == "tiny" and result["threads"] >= 1
    assert {"cpu", "flags", "machine"} <= set(result["host"])
    text = result["modalities"]["text"]
    assert text["inputs"]["input_ids"][0] == 4
    rows = text["rows"]
    kinds = [r["kind"] for r in rows]
    assert kinds[:2] == ["hf", "hf"] and "auto" in kinds and kinds[-1] == "gateway"
    engines = {(r["engine"], r["variant"]) for r in rows if r["kind"] == "engine"}
    assert ("onnxruntime", "fp32") in engines and ("onnxruntime", "int8") in engines
    hf = [r for r in rows if r["kind"] == "hf"]
    peer = max(hf, key=lambda r: r["items_per_s"])
    assert text["peer"] == peer["variant"] and text["peer_items_per_s"] == peer["items_per_s"]
    for r in rows:
        assert r["items_per_s"] > 0, r
        assert isinstance(r["cosine"], float) and -1.0 <= r["cosine"] <= 1.0 + 1e-9, r
        assert r["ratio_vs_peer"] == pytest.approx(r["items_per_s"] / r["peer_items_per_s"], rel=1e-9)
        if r["kind"] != "gateway":
            assert r["peer_items_per_s"] == peer["items_per_s"]
    gateway = rows[-1]
    assert gateway["errors"] == 0 and gateway["concurrency"] == 16 and gateway["items"] == 8
    auto = next(r for r in rows if r["kind"] == "auto")
    assert (gateway["engine"], gateway["variant"]) == (auto["engine"], auto["variant"])
    assert text["selection"]["engine"] == auto["engine"]


def test_fp32_engine_matches_the_independent_hf_reference(run):
    _, result, _ = run
    rows = result["modalities"]["text"]["rows"]
    ort = next(r for r in rows if (r["kind"], r["engine"], r["variant"]) == ("engine", "onnxruntime", "fp32"))
    assert ort["cosine"] >= 0.9999
    assert next(r for r in rows if r["variant"] == "fp32 eager")["cosine"] == 1.0  # the reference itself


def test_outputs_written(run):
    out, result, docs = run
    md = (out / "peers.md").read_text()
    assert "| workload | engine / variant | items/s | x HF best | cosine |" in md
    assert result["host"]["cpu"] in md and "ONNX Runtime fp32" in md
    assert (out / "peers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and text.count(BEGIN_MARK) == 1 and text.count(END_MARK) == 1


def test_update_docs_replaces_only_the_marked_section(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("head\n")
    update_docs(doc, "one")
    assert doc.read_text() == f"head\n\n{BEGIN_MARK}\none\n{END_MARK}\n"
    doc.write_text(doc.read_text() + "tail\n")
    update_docs(doc, "two")
    assert doc.read_text() == f"head\n\n{BEGIN_MARK}\ntwo\n{END_MARK}\ntail\n"


def test_reference_sees_the_layer_choice(tmp_path):
    """The weights are scaled like a trained network's, so the reference separates top-K from top-(K-1):
    a cosine bar of 0.9999 against it is a real check of the layer average, not a formality."""
    import torch

    from d2v.core.contract import worst_cosine
    from d2v.workflows.bench_peers_hf import build_hf, hf_pooled

    torch.manual_seed(0)
    model = build_hf("text", "tiny", tmp_path, seed=0)
    ids = torch.randint(5, 300, (3, 20))
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    inputs = {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}
    assert worst_cosine(hf_pooled(model, "text", inputs, 2), hf_pooled(model, "text", inputs, 1)) < 0.99
