"""The calibrated int8 path: NNCF static quantisation of the OpenVINO model on real inputs (the bundled sample
data by default, or the user's own), gated on held-out real and synthetic inputs, served by OpenVINO and
offered to ``--engine auto``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import testkit
from conftest import MODALITIES

pytest.importorskip("nncf")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def int8_exports(checkpoints, tmp_path_factory):
    from d2v.export.exporter import ExportOptions, export_onnx

    store = tmp_path_factory.mktemp("ov-int8")
    return {
        m: (export_onnx(checkpoints[m], store / f"{m}-int8", ExportOptions(variants=["ov-int8"])), store / f"{m}-int8")
        for m in MODALITIES
    }


@pytest.mark.parametrize("modality", MODALITIES)
def test_static_int8_is_calibrated_on_real_inputs_and_gated(int8_exports, modality):
    manifest, out = int8_exports[modality]
    v = manifest.variants["ov-int8"]
    assert (v.engine, v.precision, v.file) == ("openvino", "int8", "model.ov-int8.xml")
    assert (out / "model.ov-int8.xml").is_file() and (out / "model.ov-int8.bin").is_file()
    details = json.loads((out / "parity.json").read_text())["variants"]["ov-int8"]
    assert details["source"].endswith(("images", "audio", "docstrings.jsonl"))  # the bundled sample data
    assert details["calibration_items"] > details["heldout_items"] > 0
    assert v.cosine_vs_fp32 >= 0.99 and v.cosine_vs_fp32 <= details["cosine_heldout_real"] + 1e-12
    import openvino as ov  # the IR is not ONNX: read the quantised graph back with OpenVINO

    ops = {op.get_type_name() for op in ov.Core().read_model(str(out / v.file)).get_ops()}
    assert "FakeQuantize" in ops or "FakeConvert" in ops  # int8 quantisation points were inserted


def test_auto_considers_it_and_openvino_serves_it(int8_exports):
    import asyncio

    from d2v.runtime import selection
    from d2v.server.app import create_app

    manifest, out = int8_exports["text"]
    cands = {(c.engine, c.variant) for c in selection.candidates(manifest, selection.Capabilities(openvino=True))}
    assert ("openvino", "ov-int8") in cands and ("onnxruntime", "ov-int8") not in cands
    assert ("openvino", "ov-int8") not in {
        (c.engine, c.variant) for c in selection.candidates(manifest, selection.Capabilities(openvino=False))
    }
    measured = {(m.engine, m.variant) for m in selection.recorded_calibration(manifest).measurements}
    assert ("openvino", "ov-int8") in measured

    async def embed(**settings):
        app = create_app(testkit.make_settings(out.parent, models=[out.name], **settings))
        async with testkit.asgi_client(app) as client:
            info = (await client.get("/info")).json()["models"][0]
            body = (await client.post("/v1/embed/text", json={"input": ["calibrated int8 on real text"]})).json()
            return info, np.asarray(body["data"][0]["embedding"])

    info, int8 = asyncio.run(embed(engine="openvino", variant="ov-int8"))
    assert (info["engine"], info["variant"]) == ("openvino", "ov-int8")
    _, fp32 = asyncio.run(embed(engine="onnxruntime"))
    assert float(int8 @ fp32 / np.linalg.norm(int8) / np.linalg.norm(fp32)) > 0.99


def test_own_calibration_manifest_and_missing_nncf(checkpoints, tmp_path, monkeypatch):
    from d2v.export import variants
    from d2v.export.exporter import ExportOptions, export_onnx

    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"my own sentence number {i}"}) + "\n" for i in range(20)))
    opts = ExportOptions(variants=["ov-int8"], calibration=str(texts), calibration_budget_s=0)
    manifest = export_onnx(checkpoints["text"], tmp_path / "own", opts)
    details = json.loads((tmp_path / "own" / "parity.json").read_text())["variants"]["ov-int8"]
    assert details["source"] == str(texts) and (details["calibration_items"], details["heldout_items"]) == (16, 4)
    assert manifest.calibration == {}  # calibration_budget_s=0 skips the engine measurements

    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):  # nncf forced off, everything else as it is
        return None if name == "nncf" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(variants.VariantUnsupported, match="nncf"):
        export_onnx(checkpoints["text"], tmp_path / "no-nncf", ExportOptions(variants=["ov-int8"]))
    skipped = export_onnx(
        checkpoints["text"], tmp_path / "skip", ExportOptions(variants=["ov-int8"], variants_explicit=False)
    )
    assert "ov-int8" not in skipped.variants
