"""d2v export (ONNX): layout, manifest, parity, variants and their refusal, options, bad input, CLI, bench."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from conftest import MODALITIES

pytest.importorskip("onnxruntime")


def cli(*argv: str) -> int:
    from d2v.cli import main

    return main([str(a) for a in argv])


def leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}")]


@pytest.mark.parametrize("modality", MODALITIES)
def test_layout_manifest_and_parity(exports, checkpoints, modality):
    import onnx

    from d2v.core.contract import INPUT_NAMES, output_names
    from d2v.core.manifest import ModelManifest
    from d2v.export.onnx_export import graph_io

    out = exports[modality]
    m = ModelManifest.load(out)
    assert (out / "model.onnx").is_file() and (out / "model.onnx.data").is_file()
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    inputs, outputs = graph_io(out / "model.onnx")
    assert m.inputs == inputs and m.outputs == outputs  # model.json describes the real graph
    assert list(m.inputs) == list(INPUT_NAMES[modality]) and list(m.outputs) == list(output_names(modality))
    assert m.inputs[INPUT_NAMES[modality][0]].shape[0] == "batch"
    if modality != "image":
        assert m.inputs[INPUT_NAMES[modality][0]].shape[1] == ("sequence" if modality == "text" else "samples")
        assert m.outputs["d2v_token_embeddings"].shape[:2] == ["batch", "sequence" if modality == "text" else "frames"]
    assert m.embedding_dim == 64 and m.num_layers == 4 and m.pooling == "mean" and m.norm == "layer"
    assert m.name == out.name  # named after its folder, so `d2v serve --model NAME` finds it in a store
    assert m.preprocessing["modality"] == modality
    if modality == "text":
        assert (out / m.preprocessing["tokenizer_file"]).is_file() and m.preprocessing["max_length"] == 64
    if modality == "audio":
        assert m.preprocessing["sample_rate"] == 16000
    if modality == "image":
        assert m.preprocessing["image_size"] == 32 and len(m.preprocessing["mean"]) == 3
    sha = hashlib.sha256((checkpoints[modality] / "model.safetensors").read_bytes()).hexdigest()
    assert m.source["sha256"] == sha
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["max_abs_diff"] <= 1e-4 and m.parity["max_abs_diff"] == report["max_abs_diff"]
    assert len(report["cases"]) >= 3
    if modality != "image":
        assert any(c["padded"] for c in report["cases"])
        traced = 16 if modality == "text" else None
        assert all(max(c["lengths"]) != traced for c in report["cases"])


@pytest.mark.parametrize("modality", MODALITIES)
def test_export_records_a_calibration_that_auto_reuses_here(exports, modality, monkeypatch):
    from d2v.core.manifest import ModelManifest
    from d2v.runtime import selection

    m = ModelManifest.load(exports[modality])
    cal = selection.recorded_calibration(m)
    assert cal is not None and cal.fingerprint == selection.host_fingerprint() and not cal.skipped
    measured = {(x.engine, x.variant) for x in cal.measurements}
    assert measured == {(c.engine, c.variant) for c in selection.candidates(m, selection.detect_capabilities())}
    assert ("onnxruntime", "fp32") in measured and ("onnxruntime", "int8") in measured
    assert all(x.items_per_s > 0 and 0.99 <= x.cosine <= 1.0 + 1e-6 for x in cal.measurements)
    monkeypatch.setattr(selection, "measure", lambda *a, **k: pytest.fail("measured although model.json fits"))
    chosen = selection.select(m, exports[modality])
    assert chosen.source == "export" and chosen.cosine >= 0.999


@pytest.mark.parametrize("modality", MODALITIES)
def test_variants_meet_their_bars(exports, modality):
    from d2v.core.manifest import ModelManifest

    m = ModelManifest.load(exports[modality])
    assert m.variants["fp16"].cosine_vs_fp32 >= 0.999 and m.variants["int8"].cosine_vs_fp32 >= 0.99
    for v in m.variants.values():
        assert (exports[modality] / v.file).is_file()
    details = json.loads((exports[modality] / "parity.json").read_text())["variants"]
    assert {"fp16", "int8"} <= set(details) and all(d["speed_vs_fp32_ort"] > 0 for d in details.values())
    import onnx

    ops = {
        n.op_type for n in onnx.load(str(exports[modality] / "model.int8.onnx"), load_external_data=False).graph.node
    }
    assert "MatMulInteger" in ops and "ConvInteger" not in ops  # convolutions stay fp32


def test_onnx_equals_torch_on_real_preprocessing(exports, checkpoints):
    """The exported graph on tokenizer output equals extract_embeddings on the PyTorch model."""
    import onnxruntime as ort
    import torch

    from d2v.models.checkpoint import load_checkpoint
    from d2v.models.embedding import extract_embeddings
    from d2v.models.preprocessing import build_preprocessor

    ckpt = load_checkpoint(checkpoints["text"])
    pre = build_preprocessor(ckpt.preprocessing, checkpoints["text"])
    feeds = pre(["a short one", "a somewhat longer sentence about embeddings and servers", "x"])
    sess = ort.InferenceSession(str(exports["text"] / "model.onnx"), providers=["CPUExecutionProvider"])
    tokens, mask, mean, cls = sess.run(None, feeds)
    with torch.no_grad():
        emb = extract_embeddings(
            ckpt.model, torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]), ckpt.embedding
        )
    np.testing.assert_array_equal(mask, emb.token_mask.numpy())
    np.testing.assert_allclose(mean, emb.mean.numpy(), atol=1e-4)
    np.testing.assert_allclose(cls, emb.cls.numpy(), atol=1e-4)
    real = mask.astype(bool)
    np.testing.assert_allclose(tokens[real], emb.tokens.numpy()[real], atol=1e-4)


def test_options_top_k_normalize_cls_dynamic_top_k(tmp_path, checkpoints):
    import onnxruntime as ort

    from d2v.core.manifest import ModelManifest

    out = tmp_path / "opts"
    argv = ["export", checkpoints["text"], out, "--top-k", "3", "--normalize", "--pooling", "cls", "--dynamic-top-k",
            "--name", "txt", "--variants", "none", "--no-optimize", "--norm", "target"]  # fmt: skip
    assert cli(*argv) == 0
    m = ModelManifest.load(out)
    assert (m.name, m.top_k, m.pooling, m.normalized, m.supports_top_k, m.norm) == (
        "txt",
        3,
        "cls",
        True,
        True,
        "target",
    )
    assert m.inputs["d2v_top_k"].dtype == "int64" and list(m.variants) == ["fp32"]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 10, 20, 30, 2]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    a = sess.run(None, {**feeds, "d2v_top_k": np.array([3], dtype=np.int64)})
    b = sess.run(None, {**feeds, "d2v_top_k": np.array([1], dtype=np.int64)})
    np.testing.assert_allclose(np.linalg.norm(a[2], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a[3], axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(a[2], b[2])
    assert json.loads((out / "parity.json").read_text())["top_k_1_max_abs_diff"] <= 1e-4


def test_variant_refused_leaves_nothing(tmp_path, checkpoints, capsys):
    out = tmp_path / "refused"
    rc = cli("export", checkpoints["image"], out, "--variants", "int8", "--min-cosine", "int8=1.0", "--no-optimize")
    err = capsys.readouterr().err
    assert rc != 0 and "variant int8 refused" in err and "below the bar 1.0" in err
    assert not out.exists() and leftovers(tmp_path, "refused") == []


def test_bad_inputs(tmp_path, checkpoints, capsys):
    rc = cli("export", tmp_path / "nope", tmp_path / "o1")
    assert rc != 0 and "checkpoint not found" in capsys.readouterr().err
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(checkpoints["text"], broken)
    (broken / "tokenizer.json").unlink()
    rc = cli("export", broken, tmp_path / "o2", "--variants", "none")
    assert rc != 0 and "tokenizer" in capsys.readouterr().err
    rc = cli("export", checkpoints["image"], tmp_path / "o3", "--opset", "7")
    assert rc != 0 and "unsupported ONNX opset 7" in capsys.readouterr().err
    rc = cli("export", checkpoints["audio"], tmp_path / "o4", "--pooling", "cls")
    assert rc != 0 and "no CLS" in capsys.readouterr().err
    rc = cli("export", checkpoints["image"], tmp_path / "o5", "--variants", "fp8")
    assert rc != 0 and "unknown variant" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-tokenizer"]


def test_existing_out_dir_needs_overwrite(tmp_path, checkpoints, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli("export", checkpoints["image"], out, "--variants", "none", "--no-optimize") != 0
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()


def test_bf16_variant(tmp_path, checkpoints):
    from d2v.export.variants import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no AMX / AVX512-BF16 (OpenVINO reports no BF16 capability)")
    from d2v.core.manifest import ModelManifest

    out = tmp_path / "bf16"
    assert cli("export", checkpoints["image"], out, "--variants", "bf16", "--no-optimize") == 0
    assert ModelManifest.load(out).variants["bf16"].cosine_vs_fp32 >= 0.999


def test_bf16_unsupported_is_refused_when_named(tmp_path, checkpoints, capsys):
    from d2v.export.variants import cpu_has_bf16

    if cpu_has_bf16():
        pytest.skip("this CPU supports bf16")
    rc = cli("export", checkpoints["image"], tmp_path / "b", "--variants", "bf16", "--no-optimize")
    assert rc != 0 and "bf16 needs a CPU with AMX" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_tensorrt_without_gpu(tmp_path, checkpoints, capsys):
    from d2v.export.tensorrt import gpu_status

    reason = gpu_status()
    if reason is None:
        pytest.skip("a GPU with TensorRT is present: the CPU-host refusal does not apply")
    rc = cli("export", checkpoints["image"], tmp_path / "trt", "--format", "tensorrt")
    err = capsys.readouterr().err
    assert rc != 0 and "needs a CUDA GPU" in err and not (tmp_path / "trt").exists()


@pytest.mark.gpu
def test_tensorrt_engine(tmp_path, checkpoints):
    from d2v.export.tensorrt import gpu_status

    reason = gpu_status()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "trt"
    assert cli("export", checkpoints["text"], out, "--format", "tensorrt", "--variants", "none") == 0
    assert (out / "model.plan").stat().st_size > 0 and (out / "model.json").is_file()


def test_format_triton_via_cli(tmp_path, checkpoints):
    repo = tmp_path / "repo"
    argv = ["export", checkpoints["image"], repo, "--format", "triton", "--name", "img", "--variants", "int8",
            "--no-optimize", "--triton-variant", "int8", "--preferred-batch-sizes", "2,4"]  # fmt: skip
    assert cli(*argv) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["img", "img_encoder", "img_preprocess"]
    cfg = (repo / "img_encoder" / "config.pbtxt").read_text()
    assert "onnx_file" in cfg and "model.int8.onnx" in cfg and "preferred_batch_size: [ 2, 4 ]" in cfg
    assert leftovers(tmp_path, "repo") == []


def test_cli_is_light_and_registered():
    from d2v.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["export", "ck", "out", "--format", "triton", "--variants", "int8"])
    assert args.format == "triton" and args.func.__name__ == "run_export"
    args = parser.parse_args(["bench", "export", "some/model"])
    assert args.func.__name__ == "run_bench"


def test_bench_export(exports, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        cli("bench", "export", exports["text"], "--batch", "2", "--length", "16", "--repeats", "2", "--json", out) == 0
    )
    result = json.loads(out.read_text())
    rows = {r["engine"]: r for r in result["results"]}
    assert rows["onnxruntime fp32"]["ratio_vs_fp32_ort"] == 1.0
    assert {"onnxruntime int8", "onnxruntime fp16", "openvino fp32"} <= set(rows)
    assert "x fp32 ORT" in capsys.readouterr().out
