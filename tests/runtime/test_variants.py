"""Manifest variants (``engine`` / ``precision``) and ``d2v serve --variant``: the chosen variant is served, and
an engine that cannot run it stops the server at startup with an error that says what would work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from testkit import asgi_client, make_settings, write_model

from d2v.core.errors import ConfigError
from d2v.core.manifest import ModelManifest, Variant
from d2v.runtime import engines as engines_pkg
from d2v.server.app import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def variant_store(tmp_path):
    """tiny-text with fp32 (any engine), int8 / optimized (ONNX Runtime files) and bf16 (OpenVINO hint on
    model.onnx). The int8 file is a copy of the fp32 graph scaled by 2 in its projection, so serving it is
    observable from outside."""
    import onnx
    from onnx import numpy_helper

    path = write_model(tmp_path, "text")
    graph = onnx.load(path / "model.onnx")
    for init in graph.graph.initializer:
        if init.name == "proj":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, "proj"))
    onnx.save(graph, path / "model.int8.onnx")
    shutil.copy2(path / "model.onnx", path / "model.optimized.onnx")
    m = ModelManifest.load(path)
    m.variants.update(
        {
            "int8": Variant("model.int8.onnx", 0.995, engine="onnxruntime", precision="int8"),
            "optimized": Variant("model.optimized.onnx", 1.0, engine="onnxruntime", precision="fp32"),
            "bf16": Variant("model.onnx", 0.9999, engine="openvino", precision="bf16"),
        }
    )
    m.save(path)
    return tmp_path


# ------------------------------------------------------------------------------------------------ manifest
def test_old_manifest_loads_with_inferred_fields(tmp_path):
    path = write_model(tmp_path, "text")
    data = json.loads((path / "model.json").read_text())
    data["variants"] = {  # as written before engine / precision existed
        "fp32": {"file": "model.onnx", "cosine_vs_fp32": 1.0},
        "int8": {"file": "model.int8.onnx", "cosine_vs_fp32": 0.995},
        "fp16": {"file": "model.fp16.onnx", "cosine_vs_fp32": 0.9999},
        "bf16": {"file": "model.onnx", "cosine_vs_fp32": 0.9999},
        "optimized": {"file": "model.optimized.onnx", "cosine_vs_fp32": 1.0},
    }
    m = ModelManifest.from_dict(data)
    got = {n: (v.engine, v.precision) for n, v in m.variants.items()}
    assert got == {
        "fp32": (None, "fp32"),
        "int8": ("onnxruntime", "int8"),
        "fp16": ("onnxruntime", "fp16"),
        "bf16": ("openvino", "bf16"),
        "optimized": ("onnxruntime", "fp32"),
    }
    m.save(tmp_path / "copy")  # the new fields round-trip
    assert ModelManifest.load(tmp_path / "copy").variants == m.variants


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"file": "model.onnx", "precision": "fp8"}, "precision must be one of"),
        ({"file": "model.onnx", "precision": "fp32", "engine": "tensorflow"}, "engine must be one of"),
        ({"file": "model.onnx", "precision": "bf16", "engine": "onnxruntime"}, "engine must be 'openvino'"),
        ({"file": "model.onnx", "precision": "int8", "typo": 1}, r"variants\.x\.typo: unknown field"),
    ],
)
def test_bad_variant_entries(tmp_path, entry, needle):
    data = json.loads((write_model(tmp_path, "text") / "model.json").read_text())
    data["variants"]["x"] = entry
    with pytest.raises(ConfigError, match=needle):
        ModelManifest.from_dict(data)


def test_select_variant(variant_store):
    m = ModelManifest.load(variant_store / "tiny-text")
    assert m.select_variant("openvino")[0] == "fp32"  # default_variant, any engine
    assert m.select_variant("onnxruntime", "int8")[1].precision == "int8"
    assert m.variants_for("openvino") == ["bf16", "fp32"]
    assert m.variants_for("onnxruntime") == ["fp32", "int8", "optimized"]


# ------------------------------------------------------------------------------------------- d2v serve
async def test_serves_the_chosen_variant(variant_store):
    body = {"input": ["hello world"], "normalize": False, "encoding_format": "float"}
    vectors = {}
    for variant in (None, "int8"):
        settings = make_settings(variant_store, models=["tiny-text"], variant=variant)
        async with asgi_client(create_app(settings)) as client:
            info = (await client.get("/info")).json()["models"][0]
            assert info["variant"] == (variant or "fp32")
            resp = await client.post("/v1/embed/text", json=body)
            assert resp.status_code == 200, resp.text
            vectors[variant] = np.asarray(resp.json()["data"][0]["embedding"])
    assert not np.allclose(vectors[None], vectors["int8"])  # the other file really ran


@pytest.mark.parametrize(
    ("engine", "variant", "needles"),
    [
        ("openvino", "int8", ["variant 'int8'", "built for onnxruntime", "--engine onnxruntime", "['bf16', 'fp32']"]),
        ("onnxruntime", "bf16", ["variant 'bf16'", "built for openvino", "--engine openvino"]),
        ("onnxruntime", "fp64", ["no variant 'fp64'", "'int8'"]),
        ("triton", "int8", ["--variant does not apply to --engine triton", "--triton-variant"]),
    ],
)
def test_engine_that_cannot_run_the_variant_is_a_startup_error(variant_store, engine, variant, needles):
    with pytest.raises(ConfigError) as info:
        create_app(make_settings(variant_store, engine=engine, variant=variant))
    for needle in needles:
        assert needle in info.value.message


def test_bf16_needs_a_bf16_cpu(variant_store, monkeypatch):
    monkeypatch.setattr(engines_pkg, "openvino_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no BF16 support"):
        create_app(make_settings(variant_store, engine="openvino", variant="bf16"))
    monkeypatch.setattr(engines_pkg, "openvino_has_bf16", lambda: True)
    settings = make_settings(variant_store, engine="openvino", variant="bf16", openvino_precision="f32")
    (model,) = create_app(settings).state.registry
    assert (model.engine.kind, model.engine.variant, model.engine.precision) == ("openvino", "bf16", "bf16")
    (model,) = create_app(make_settings(variant_store, engine="openvino", openvino_precision="f32")).state.registry
    assert (model.engine.variant, model.engine.precision) == ("fp32", "f32")


def test_cli_reports_the_startup_error(variant_store, capsys, monkeypatch):
    import uvicorn

    from d2v.cli import main

    def never(*args, **kwargs):
        raise AssertionError("the server must not start")

    monkeypatch.setattr(uvicorn, "run", never)
    code = main(["serve", "--store", str(variant_store), "--engine", "openvino", "--variant", "int8"])
    assert code == ConfigError("x").exit_code != 0
    err = capsys.readouterr().err
    assert "d2v serve: error:" in err and "built for onnxruntime" in err
