"""Inputs and outputs on an object store, through fsspec (s3fs) against a real S3-protocol server: moto's
standalone server on 127.0.0.1, started here. Manifests, image files and directories are read from the
bucket; shards, error files, the ledger (one object per partition) and the report are written to it; shards
the ledger does not name are ignored, and a partition whose ledger object is missing runs again."""

from __future__ import annotations

import io
import json
import logging
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest


def _cli(*args: str) -> int:
    from d2v.cli import main

    return main(["extract", *args, "--no-progress"])


@pytest.fixture(scope="module")
def s3(testkit):
    """``(s3fs filesystem, bucket)`` on a moto server; the AWS variables point every client at it."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    port = testkit.free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        import s3fs

        from d2v.extract import fs as d2v_fs

        s3fs.S3FileSystem.clear_instance_cache()
        d2v_fs._CACHE.clear()
        filesystem = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"])
        filesystem.mkdir("d2v-test")
        try:
            yield filesystem, "d2v-test"
        finally:
            d2v_fs._CACHE.clear()
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.fixture(scope="module")
def uploaded(s3, testkit, tmp_path_factory):
    """The same inputs locally and in the bucket: imgs/{cats,dogs}/*.png, a broken image, and a manifest."""
    fs, bucket = s3
    local = tmp_path_factory.mktemp("inputs")
    for k, label in enumerate(("cats", "dogs")):
        (local / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            (local / "imgs" / label / f"{i}.png").write_bytes(testkit.png_bytes(seed=10 * k + i))
    (local / "imgs" / "broken.png").write_bytes(b"not an image")
    rows = [{"id": f"t{i}", "text": f"text number {i}"} for i in range(7)]
    rows += [{"id": "img", "path": "imgs/cats/0.png", "label": "cat"}, {"id": "gone", "path": "imgs/nope.png"}]
    (local / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{bad json\n")
    fs.put(str(local) + "/", f"{bucket}/in/", recursive=True)
    return local


def _ids(fs, prefix: str) -> list[str]:
    ids = []
    for path in fs.glob(f"{prefix}/embeddings/*/part-*.parquet"):
        with fs.open(path, "rb") as f:
            ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
    return ids


def _vectors(fs, path: str) -> dict[str, np.ndarray]:
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["id", "embedding"])
    return {i: np.asarray(v) for i, v in zip(table["id"].to_pylist(), table["embedding"].to_pylist(), strict=True)}


def test_manifest_in_a_bucket_to_an_output_in_a_bucket(s3, uploaded, model_store, tmp_path):
    fs, bucket = s3
    out = f"{bucket}/out-manifest"
    args = [f"s3://{bucket}/in/m.jsonl", f"s3://{out}", "--store", str(model_store), "--engine", "onnxruntime"]
    assert _cli(*args, "--partition-size", "4", "--format", "npy") == 0
    assert sorted(_ids(fs, out)) == sorted([f"t{i}" for i in range(7)] + ["img"])
    ledger = sorted(fs.ls(f"{out}/ledger"))
    assert [p.rsplit("/", 1)[1] for p in ledger] == ["part-000000.json", "part-000001.json", "part-000002.json"]
    errors = [json.loads(x) for x in fs.cat(f"{out}/errors.jsonl").decode().splitlines()]
    assert {e["id"] for e in errors} == {"gone", "m.jsonl:10"}
    manifest = json.loads(fs.cat(f"{out}/manifest.json"))
    assert manifest["counts"]["embedded"] == 8 and manifest["ledger"] == "ledger/"
    assert np.load(io.BytesIO(fs.cat(f"{out}/tiny-text.npy"))).shape == (7, 16) and fs.exists(f"{out}/pca.png")
    # the same inputs from local disk give the same vectors
    local_out = tmp_path / "local"
    assert _cli(str(uploaded / "m.jsonl"), str(local_out), "--store", str(model_store), "--engine", "onnxruntime") == 0
    remote = {}
    for path in fs.glob(f"{out}/embeddings/tiny-image/*.parquet"):
        remote.update(_vectors(fs, path))
    (local_shard,) = (local_out / "embeddings" / "tiny-image").glob("*.parquet")
    local = {
        i: np.asarray(v)
        for i, v in zip(*pq.read_table(local_shard, columns=["id", "embedding"]).to_pydict().values(), strict=True)
    }
    assert remote.keys() == local.keys() == {"img"}
    np.testing.assert_allclose(remote["img"], local["img"], atol=1e-5)


def test_directory_in_a_bucket_and_the_object_store_commit_protocol(s3, uploaded, model_store):
    fs, bucket = s3
    out = f"{bucket}/out-dir"
    args = [f"s3://{bucket}/in/imgs", f"s3://{out}", "--store", str(model_store), "--engine", "onnxruntime"]
    args += ["--partition-size", "3", "--no-plot"]
    assert _cli(*args) == 0
    ids = sorted(_ids(fs, out))
    assert ids == sorted(f"{label}/{i}.png" for label in ("cats", "dogs") for i in range(3))
    assert [json.loads(x)["id"] for x in fs.cat(f"{out}/errors.jsonl").decode().splitlines()] == ["broken.png"]

    # A shard no ledger object names (a writer killed before its ledger line) is ignored ...
    shard = f"{out}/embeddings/tiny-image/part-000000.parquet"
    fs.copy(shard, f"{out}/embeddings/tiny-image/part-000009.parquet")
    # ... and a partition whose ledger object is missing (killed after its shard) runs again, same file name
    fs.rm(f"{out}/ledger/part-000001.json")
    assert _cli(*args, "--format", "npy") == 0
    manifest = json.loads(fs.cat(f"{out}/manifest.json"))
    assert manifest["counts"]["this_run"] == 3 and manifest["counts"]["embedded"] == 6
    assert np.load(io.BytesIO(fs.cat(f"{out}/tiny-image.npy"))).shape == (6, 16)  # part-000009 not read
    assert len(fs.ls(f"{out}/ledger")) == 3


def test_a_missing_filesystem_package_is_a_clear_error(model_store, tmp_path, capsys):
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert _cli("nosuchfs://bucket/in.jsonl", str(tmp_path / "o"), "--store", str(model_store)) != 0
    assert "no filesystem for nosuchfs://" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_engine_reads_and_writes_the_bucket(s3, uploaded, model_store):
    """read_binary_files through the S3 filesystem on the workers, and the workers' writes to the bucket."""
    ray = pytest.importorskip("ray")
    fs, bucket = s3
    out = f"{bucket}/out-ray"
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        args = [f"s3://{bucket}/in/imgs", f"s3://{out}", "--engine", "ray", "--store", str(model_store)]
        assert _cli(*args, "--workers", "1", "--partition-size", "4", "--no-plot") == 0
    finally:
        ray.shutdown()
    assert sorted(_ids(fs, out)) == sorted(f"{label}/{i}.png" for label in ("cats", "dogs") for i in range(3))
    fs.invalidate_cache()
    assert len(fs.ls(f"{out}/ledger")) == 2
    assert [json.loads(x)["id"] for x in fs.cat(f"{out}/errors.jsonl").decode().splitlines()] == ["broken.png"]
