"""Triton repository: every config.pbtxt parses with Triton's model_config proto; a real tritonserver serves
the ensembles (raw bytes in) and their embeddings equal in-process ONNX Runtime on the same preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import MODALITIES

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(path):
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def manifest(path):
    from d2v.core.manifest import ModelManifest

    return ModelManifest.load(path)


@pytest.mark.parametrize("modality", MODALITIES)
def test_generated_configs_parse(triton_repo, exports, modality):
    m = manifest(exports[modality])
    enc = parse(triton_repo / m.triton.encoder / "config.pbtxt")
    pre = parse(triton_repo / m.triton.preprocess / "config.pbtxt")
    ens = parse(triton_repo / m.triton.ensemble / "config.pbtxt")
    assert enc.backend == "python" and pre.backend == "python" and ens.platform == "ensemble"
    for cfg in (enc, pre, ens):
        assert cfg.max_batch_size == m.max_batch_size
    # dims match the ONNX axes (batch dropped, symbolic -> -1)
    for t in enc.input:
        assert list(t.dims) == [d if isinstance(d, int) else -1 for d in m.inputs[t.name].shape[1:]]
    assert {t.name for t in enc.output} == set(m.outputs)
    for t in enc.output:
        assert list(t.dims) == [d if isinstance(d, int) else -1 for d in m.outputs[t.name].shape[1:]]
    db = enc.dynamic_batching
    assert list(db.preferred_batch_size) == [4, 8, 16] and db.max_queue_delay_microseconds == 2000
    assert db.default_queue_policy.max_queue_size == 1024
    assert db.default_queue_policy.timeout_action == pb.ModelQueuePolicy.REJECT
    assert db.default_queue_policy.default_timeout_microseconds == 5_000_000
    assert enc.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert enc.model_warmup and enc.model_warmup[0].inputs
    for w in enc.model_warmup[0].inputs.values():
        assert (triton_repo / m.triton.encoder / "warmup" / w.input_data_file).is_file()
    assert pre.input[0].data_type == pb.TYPE_STRING and list(pre.input[0].dims) == [1]
    assert [t.name for t in pre.output] == [t.name for t in enc.input]
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [m.triton.preprocess, m.triton.encoder]
    assert set(dict(steps[0].output_map).values()) == set(dict(steps[1].input_map).values())
    assert set(dict(steps[1].output_map)) == set(m.outputs)
    assert (triton_repo / m.triton.preprocess / "1" / "d2v" / "models" / "preprocessing" / "__init__.py").is_file()


def test_onnxruntime_backend_config(tmp_path, exports):
    from d2v.export.triton_repo import TritonRepoOptions, write_repository

    m = manifest(exports["text"])
    write_repository(exports["text"], tmp_path, TritonRepoOptions(encoder_backend="onnxruntime", variant="int8"))
    enc = parse(tmp_path / m.triton.encoder / "config.pbtxt")
    assert enc.backend == "onnxruntime" and enc.default_model_filename == "model.int8.onnx"
    assert (tmp_path / m.triton.encoder / "1" / "model.int8.onnx").is_file()
    assert not (tmp_path / m.triton.encoder / "1" / "model.py").exists()
    with pytest.raises(Exception, match="already holds"):
        write_repository(exports["text"], tmp_path)


def _raw_inputs(modality: str) -> list[bytes]:
    if modality == "text":
        return [b"hello triton", b"data2vec embeds text, images and speech", b"a"]
    if modality == "image":
        from PIL import Image

        out = []
        for size in ((40, 30), (64, 64)):
            buf = io.BytesIO()
            img = Image.fromarray(np.random.default_rng(size[0]).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))
            img.save(buf, format="PNG")
            out.append(buf.getvalue())
        return out
    import soundfile as sf

    out = []
    for seconds, rate in ((0.5, 16000), (0.3, 8000)):
        buf = io.BytesIO()
        wave = np.random.default_rng(rate).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1
        sf.write(buf, wave, rate, format="WAV")
        out.append(buf.getvalue())
    return out


def _reference(export_dir, raws):
    import onnxruntime as ort

    from d2v.models.preprocessing import build_preprocessor

    m = manifest(export_dir)
    pre = build_preprocessor(m.preprocessing, export_dir)
    items = [pre.load_item(r.decode() if m.modality == "text" else r) for r in raws]
    feeds = pre.collate(items)
    session = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip(m.outputs, session.run(list(m.outputs), feeds), strict=True))


@pytest.mark.triton
@pytest.mark.parametrize("modality", MODALITIES)
def test_ensemble_equals_in_process_onnxruntime(triton_server, exports, modality):
    import tritonclient.http as httpclient

    m = manifest(exports[modality])
    raws = _raw_inputs(modality)
    client = httpclient.InferenceServerClient(triton_server.http_url)
    try:
        inp = httpclient.InferInput(m.triton.raw_input, [len(raws), 1], "BYTES")
        inp.set_data_from_numpy(np.array(raws, dtype=object).reshape(-1, 1))
        result = client.infer(m.triton.ensemble, [inp], outputs=[httpclient.InferRequestedOutput(n) for n in m.outputs])
    finally:
        client.close()
    ref = _reference(exports[modality], raws)
    for name, expected in ref.items():
        got = result.as_numpy(name)
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.triton
def test_bad_input_is_invalid_arg_and_server_survives(triton_server, exports):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    m = manifest(exports["image"])
    client = httpclient.InferenceServerClient(triton_server.http_url)
    try:
        inp = httpclient.InferInput(m.triton.raw_input, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"definitely not an image"]], dtype=object))
        with pytest.raises(InferenceServerException) as err:
            client.infer(m.triton.ensemble, [inp])
        assert err.value.status() == "400" and "preprocessing" in err.value.message()
        bad_text = httpclient.InferInput("raw_input", [1, 1], "BYTES")
        bad_text.set_data_from_numpy(np.array([[b"\xff\xfe invalid utf-8"]], dtype=object))
        with pytest.raises(InferenceServerException, match="UTF-8"):
            client.infer(manifest(exports["text"]).triton.ensemble, [bad_text])
        assert client.is_server_live() and client.is_model_ready(m.triton.ensemble)
    finally:
        client.close()
    # gRPC (KServe v2) works on the same ensemble after the errors
    g = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        tm = manifest(exports["text"])
        inp = grpcclient.InferInput(tm.triton.raw_input, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"still alive"]], dtype=object))
        out = g.infer(tm.triton.ensemble, [inp]).as_numpy("d2v_mean_embedding")
        assert out.shape == (1, tm.embedding_dim) and np.isfinite(out).all()
    finally:
        g.close()
