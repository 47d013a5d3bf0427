"""A converted data2vec 2.0 fairseq model of each modality exports to ONNX and is served by the gateway
(embedded ONNX Runtime engine); the served vectors equal the embedding computed from fairseq's own forward
of the same preprocessed inputs, and ``/info`` and ``model.json`` say where the weights came from."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys

import numpy as np
import pytest
import testkit
import torch

from d2v.cli import main as d2v_main

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

RAW = {
    "text": ["the quick brown fox", "héllo wörld 🎉 and a longer sentence than the first", "日本語"],
    "image": [testkit.png_bytes(40, 30, seed=1), testkit.png_bytes(64, 64, seed=2), testkit.png_bytes(17, 90, seed=3)],
    "audio": [testkit.wav_bytes(0.1, seed=1), testkit.wav_bytes(0.07, 8000, seed=2), testkit.wav_bytes(0.05, seed=3)],
}


@pytest.fixture(scope="module")
def served_store(fairseq_oracle, tmp_path_factory):
    """Each v2 kind converted (image: the EMA teacher) and exported into one model store."""
    from d2v.export.exporter import ExportOptions, export_onnx

    root = tmp_path_factory.mktemp("fairseq-serve")
    files = fairseq_oracle.build_all(root, ("audio_v2", "image_v2", "text_v2"))
    store = root / "store"
    for modality in RAW:
        kind = f"{modality}_v2"
        ckpt = root / f"ckpt-{modality}"
        args = ["convert", "fairseq", str(files[kind]), str(ckpt), "--dict", str(files["bpe"])]
        assert d2v_main(args + (["--teacher"] if modality == "image" else [])) == 0
        opts = ExportOptions(name=f"fs-{modality}", variants=[], calibration_budget_s=0)
        export_onnx(ckpt, store / f"fs-{modality}", opts)
    return files, root, store


def _expected(oracle, files, root, modality: str) -> np.ndarray:
    """fairseq's forward of the project-preprocessed items, each on its own, pooled as the server pools."""
    from d2v.models.checkpoint import load_checkpoint
    from d2v.models.preprocessing import build_preprocessor

    ckpt = load_checkpoint(root / f"ckpt-{modality}")
    pre = build_preprocessor(ckpt.preprocessing, ckpt.path)
    items = [pre.load_item(base64.b64decode(r) if modality != "text" else r) for r in _payload(modality)]
    batch = pre.collate(items)
    source = torch.from_numpy(next(v for k, v in batch.items() if k != "attention_mask"))
    padding = None if "attention_mask" not in batch else torch.from_numpy(batch["attention_mask"] == 0)
    ref = oracle.forward(
        f"{modality}_v2",
        files[f"{modality}_v2"],
        source,
        padding,
        teacher=modality == "image",
        dict_path=files["bpe"] / "dict.txt",
        each_alone=True,
    )
    top_k, extra = ckpt.embedding.top_k, ckpt.model.num_extra_tokens
    num = sum(k.startswith("block_") for k in ref)
    normed = []
    for i in range(num - top_k, num):
        x = ref[f"block_{i}"].astype(np.float64)
        normed.append((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5))
    body = np.mean(normed, axis=0)[:, extra:]
    lengths = torch.tensor([len(item) for item in items])  # ids / samples; images are never padded
    if modality == "audio":
        lengths = ckpt.model.front_end.num_frames(lengths)
    elif modality == "image":
        lengths = torch.full((len(items),), body.shape[1])
    real = (np.arange(body.shape[1])[None, :] < lengths.numpy()[:, None])[..., None]
    return (body * real).sum(1) / real.sum(1)


def _payload(modality: str) -> list[str]:
    return RAW[modality] if modality == "text" else [base64.b64encode(r).decode() for r in RAW[modality]]


@pytest.mark.parametrize("modality", ["audio", "image", "text"])
async def test_converted_v2_model_serves_fairseq_embeddings(fairseq_oracle, served_store, modality):
    from d2v.server.app import create_app

    files, root, store = served_store
    name = f"fs-{modality}"
    manifest = json.loads((store / name / "model.json").read_text())
    provenance = manifest["source"]["provenance"]
    sha = hashlib.sha256(files[f"{modality}_v2"].read_bytes()).hexdigest()
    assert provenance["sha256"] == sha and provenance["type"] == "fairseq"
    assert provenance["weights"] == ("teacher" if modality == "image" else "student")
    async with testkit.asgi_client(create_app(testkit.make_settings(store))) as client:
        body = {"input": _payload(modality), "model": name, "normalize": False}
        r = await client.post(f"/v1/embed/{modality}", json=body)
        assert r.status_code == 200, r.text
        served = np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float64)
        info = (await client.get("/info")).json()
    described = next(m for m in info["models"] if m["name"] == name)
    assert described["source"]["provenance"]["sha256"] == sha and "checkpoint" not in described["source"]
    assert described["source"]["provenance"]["weights"] == provenance["weights"]
    expected = _expected(fairseq_oracle, files, root, modality)
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= 1e-4


@pytest.mark.triton
def test_converted_v2_models_run_in_a_real_triton_ensemble(served_store):
    """The same converted models as a Triton repository (ensemble: preprocess -> encoder) on the real
    tritonserver: the ensemble's vectors equal the embedded engine's for the same raw inputs."""
    import tritonclient.grpc as grpcclient

    from d2v.core.contract import MEAN_OUTPUT
    from d2v.server.app import create_app

    tf = sys.modules["triton_fixtures"]
    reason = tf.triton_skip_reason()
    if reason:
        pytest.skip(reason)
    _, root, store = served_store
    exports = {m: store / f"fs-{m}" for m in RAW}
    repo = tf.write_triton_repo(exports, root / "triton-repo")
    server = tf.start_triton(repo)
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        from_triton = {}
        for modality in RAW:
            raws = [r.encode() if modality == "text" else r for r in RAW[modality]]
            tensor = grpcclient.InferInput("raw_input", [len(raws), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[r] for r in raws], dtype=object))
            result = client.infer(f"fs-{modality}", [tensor], outputs=[grpcclient.InferRequestedOutput(MEAN_OUTPUT)])
            from_triton[modality] = result.as_numpy(MEAN_OUTPUT)
        client.close()
    finally:
        server.stop()

    async def embedded() -> dict[str, np.ndarray]:
        out = {}
        async with testkit.asgi_client(create_app(testkit.make_settings(store))) as http:
            for modality in RAW:
                body = {"input": _payload(modality), "model": f"fs-{modality}", "normalize": False}
                r = await http.post(f"/v1/embed/{modality}", json=body)
                assert r.status_code == 200, r.text
                out[modality] = np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        return out

    for modality, served in asyncio.run(embedded()).items():
        assert from_triton[modality].shape == served.shape, modality
        np.testing.assert_allclose(from_triton[modality], served, atol=1e-5, rtol=0, err_msg=modality)
