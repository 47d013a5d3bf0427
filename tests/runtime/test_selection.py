"""``--engine auto``: candidates per capability (each forced off), measurement, the cosine gate, caching,
reuse of export's measurements only on the same host, and what /info reports."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import pytest
from testkit import asgi_client, make_settings, write_model

from d2v.core.errors import ConfigError
from d2v.core.manifest import ModelManifest, Variant
from d2v.runtime import selection
from d2v.runtime.engines import EngineConfig, build_engine
from d2v.runtime.selection import Calibration, Capabilities, Measurement, candidates, choose, select
from d2v.server.app import create_app

ALL = Capabilities(onnxruntime=True, openvino=True, bf16=True, cuda=True)


@pytest.fixture
def model_dir(tmp_path):
    """tiny-text with fp32, int8 (a copy of fp32: fast to build, same numbers), fp16 and bf16 entries."""
    path = write_model(tmp_path, "text")
    shutil.copy2(path / "model.onnx", path / "model.int8.onnx")
    shutil.copy2(path / "model.onnx", path / "model.fp16.onnx")
    m = ModelManifest.load(path)
    m.variants.update(
        {
            "int8": Variant("model.int8.onnx", 0.9995, engine="onnxruntime", precision="int8"),
            "fp16": Variant("model.fp16.onnx", 0.99999, engine="onnxruntime", precision="fp16"),
            "bf16": Variant("model.onnx", 0.99999, engine="openvino", precision="bf16"),
        }
    )
    m.save(path)
    return path


def pairs(cands) -> set[tuple[str, str]]:
    return {(c.engine, c.variant) for c in cands}


def test_candidates_follow_the_capabilities(model_dir):
    m = ModelManifest.load(model_dir)
    every = {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "fp16")}
    every |= {("openvino", "fp32"), ("openvino", "bf16")}
    assert pairs(candidates(m, ALL)) == every
    assert candidates(m, ALL)[0].engine == "onnxruntime" and candidates(m, ALL)[0].variant == "fp32"
    # Each capability forced off removes exactly what needs it.
    assert pairs(candidates(m, Capabilities(openvino=True, bf16=False, cuda=True))) == every - {("openvino", "bf16")}
    assert pairs(candidates(m, Capabilities(openvino=False, cuda=True))) == every - {
        ("openvino", "fp32"),
        ("openvino", "bf16"),
    }
    assert ("onnxruntime", "fp16") not in pairs(candidates(m, Capabilities(openvino=True, bf16=True, cuda=False)))


def calibration(rates: dict[tuple[str, str], float], cosines: dict | None = None) -> Calibration:
    cosines = cosines or {}
    rows = [
        Measurement(engine, variant, "x", rate, cosines.get((engine, variant), 1.0))
        for (engine, variant), rate in rates.items()
    ]
    return Calibration(selection.host_fingerprint(), {"threads": 0}, rows, 0.1)


def test_choose_takes_the_fastest_within_the_cosine_bar(model_dir):
    m = ModelManifest.load(model_dir)
    cal = calibration({("onnxruntime", "fp32"): 10, ("onnxruntime", "int8"): 30, ("openvino", "bf16"): 20})
    assert (choose(m, cal, 0.999, "calibration").engine, choose(m, cal, 0.999, "x").variant) == ("onnxruntime", "int8")
    # int8's export cosine (0.9995) misses a stricter bar: the next fastest qualifying candidate wins.
    strict = choose(m, cal, 0.9999, "calibration")
    assert (strict.engine, strict.variant) == ("openvino", "bf16")
    assert {c["variant"]: c["eligible"] for c in strict.candidates}["int8"] is False
    # A measured cosine under the bar counts even where the export's figure passed.
    bad = calibration({("onnxruntime", "fp32"): 10, ("openvino", "bf16"): 20}, {("openvino", "bf16"): 0.99})
    assert choose(m, bad, 0.999, "calibration").engine == "onnxruntime"
    # fp32 on ONNX Runtime is the reference: always eligible, so there is always a choice.
    only = calibration({("onnxruntime", "fp32"): 1}, {("onnxruntime", "fp32"): 0.5})
    assert choose(m, only, 0.999, "calibration").variant == "fp32"
    # An explicit variant restricts the choice to the engines that run it.
    assert choose(m, cal, 0.999, "calibration", variant="bf16").engine == "openvino"


def test_select_measures_once_then_reads_the_cache(model_dir, monkeypatch):
    m = ModelManifest.load(model_dir)
    caps = Capabilities(onnxruntime=True, openvino=True, bf16=False)
    first = select(m, model_dir, budget_s=2.0, caps=caps)
    assert first.source == "calibration"
    measured = {(c["engine"], c["variant"]) for c in first.candidates}
    assert measured == {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32")}
    assert all(c["items_per_s"] > 0 for c in first.candidates)
    ov = next(c for c in first.candidates if c["engine"] == "openvino")
    assert ov["cosine"] > 0.9999  # OpenVINO f32 runs the same graph
    cached = list((model_dir / "calibration").glob("*.json"))
    assert len(cached) == 1

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again although the cache fits")

    monkeypatch.setattr(selection, "measure", no_measuring)
    again = select(m, model_dir, budget_s=2.0, caps=caps)
    assert again.source == "cache" and (again.engine, again.variant) == (first.engine, first.variant)
    # Other candidates (a capability appeared) or other threads: the cache does not fit, so measure.
    with pytest.raises(AssertionError, match="measured again"):
        select(m, model_dir, caps=Capabilities(onnxruntime=True, openvino=False))
    with pytest.raises(AssertionError, match="measured again"):
        select(m, model_dir, caps=caps, threads=1)
    cached[0].write_text("{not json")  # a damaged cache is measured again, never fatal
    with pytest.raises(AssertionError, match="measured again"):
        select(m, model_dir, caps=caps)


def test_export_measurements_count_only_on_the_same_host(model_dir, monkeypatch):
    caps = Capabilities(onnxruntime=True, openvino=False)
    m = ModelManifest.load(model_dir)
    recorded = calibration({("onnxruntime", "fp32"): 5, ("onnxruntime", "int8"): 50})
    m.calibration = asdict(recorded)
    m.save(model_dir)
    m = ModelManifest.load(model_dir)
    chosen = select(m, model_dir, caps=caps)
    assert (chosen.source, chosen.variant) == ("export", "int8")

    other = dict(m.calibration, fingerprint={**recorded.fingerprint, "cpu": "another CPU"})
    m.calibration = other
    calls = []
    real = selection.measure
    monkeypatch.setattr(selection, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert select(m, model_dir, caps=caps, budget_s=1.0).source == "calibration" and calls == [1]


def test_variant_with_auto_and_unknown_variant(model_dir):
    m = ModelManifest.load(model_dir)
    caps = Capabilities(onnxruntime=True, openvino=False)
    assert select(m, model_dir, caps=caps, variant="int8", budget_s=1.0).variant == "int8"
    with pytest.raises(ConfigError, match="no engine on this host runs variant 'bf16'"):
        select(m, model_dir, caps=caps, variant="bf16")


def test_a_cut_short_calibration_is_completed_by_the_next_start(model_dir, monkeypatch):
    m = ModelManifest.load(model_dir)
    caps = Capabilities(onnxruntime=True, openvino=True, bf16=False)
    first = select(m, model_dir, caps=caps, budget_s=1e-6)  # the reference alone fits the budget
    assert first.source == "calibration" and [c["variant"] for c in first.candidates] == ["fp32"]
    measured = []
    real = selection.measure
    monkeypatch.setattr(
        selection, "measure", lambda mf, d, cands, **kw: measured.append(cands) or real(mf, d, cands, **kw)
    )
    second = select(m, model_dir, caps=caps, budget_s=5.0)
    # Only the missing candidates (and the reference, for the cosines) were measured; the result is complete.
    assert [(c.engine, c.variant) for c in measured[0]][0] == ("onnxruntime", "fp32")
    assert {(c["engine"], c["variant"]) for c in second.candidates} == {
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
        ("openvino", "fp32"),
    }
    assert select(m, model_dir, caps=caps).source == "cache" and len(measured) == 1


def test_short_budgets_measure_the_most_promising_first(model_dir):
    m = ModelManifest.load(model_dir)
    order = [(c.engine, c.variant) for c in selection.by_promise(selection.candidates(m, ALL), None)]
    assert order[0] == ("onnxruntime", "fp32") and order[1] == ("openvino", "bf16")
    prior = calibration({("onnxruntime", "fp32"): 1, ("openvino", "fp32"): 9, ("openvino", "bf16"): 3})
    order = [(c.engine, c.variant) for c in selection.by_promise(selection.candidates(m, ALL), prior)]
    assert order[:3] == [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]


@pytest.mark.anyio
async def test_auto_is_the_default_and_info_says_why(model_dir, monkeypatch):
    monkeypatch.setattr(selection, "detect_capabilities", lambda: Capabilities(onnxruntime=True, openvino=True))
    engine = build_engine(ModelManifest.load(model_dir), model_dir, EngineConfig(calibration_budget_s=2.0))
    assert engine.selection["engine"] in ("onnxruntime", "openvino") and engine.selection["min_cosine"] == 0.999
    assert engine.describe()["selection"]["candidates"]

    settings = make_settings(model_dir.parent, engine="auto", models=["tiny-text"])
    async with asgi_client(create_app(settings)) as client:
        info = (await client.get("/info")).json()["models"][0]
        assert info["selection"]["source"] == "cache"  # measured by build_engine above, on this host
        assert info["engine"] == info["selection"]["engine"] and info["variant"] == info["selection"]["variant"]
        resp = await client.post("/v1/embed/text", json={"input": ["auto engine"]})
        assert resp.status_code == 200


def test_cache_file_is_a_calibration(model_dir):
    m = ModelManifest.load(model_dir)
    select(m, model_dir, caps=Capabilities(onnxruntime=True), budget_s=1.0)
    (path,) = (model_dir / "calibration").glob("*.json")
    data = json.loads(path.read_text())
    assert set(data) == {"fingerprint", "batch", "measurements", "seconds", "skipped"}
    assert data["batch"]["inputs"]["input_ids"][0] == 8
