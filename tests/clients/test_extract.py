"""``d2v extract``: every engine, bad inputs, bad manifest rows, and resume after a SIGKILLed run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(testkit, tmp_path) -> Path:
    """cats/ and dogs/ folders with images, texts and a clip, plus one corrupt image."""
    root = tmp_path / "data"
    for k, label in enumerate(("cats", "dogs")):
        (root / label).mkdir(parents=True)
        for i in range(4):
            (root / label / f"{i}.png").write_bytes(testkit.png_bytes(seed=10 * k + i))
            (root / label / f"{i}.txt").write_text(f"{label} sentence {i}")
        (root / label / "clip.wav").write_bytes(testkit.wav_bytes(seed=k))
    (root / "broken.png").write_bytes(b"not an image at all")
    return root


def extract(*args: str) -> int:
    from d2v.cli import main

    return main(["extract", *args, "--no-progress"])


def read_ids(out: Path) -> list[str]:
    return ds.dataset(out / "embeddings", format="parquet").to_table(columns=["id"]).column("id").to_pylist()


def error_ids(out: Path) -> list[str]:
    return [json.loads(x)["id"] for x in (out / "errors.jsonl").read_text().splitlines()]


def test_local_engine_directory(data_dir, model_store, tmp_path):
    out = tmp_path / "out"
    args = [str(data_dir), str(out), "--store", str(model_store), "--batch-size", "3", "--shard-size", "4"]
    assert extract(*args, "--format", "npy", "--tokens") == 0
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 18 and "cats/0.png" in ids and "dogs/clip.wav" in ids
    assert error_ids(out) == ["broken.png"]
    text = ds.dataset(out / "embeddings" / "tiny-text").to_table()
    assert str(text.schema.field("embedding").type) == "fixed_size_list<element: float>[16]"
    assert set(text.column("label").to_pylist()) == {"cats", "dogs"} and text.column("tokens")[0].as_py()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["embedded"] == 18 and manifest["counts"]["failed"] == 1
    assert len(manifest["models"]["tiny-image"]["manifest_sha256"]) == 64
    assert (out / "pca.png").stat().st_size > 1000 and np.load(out / "tiny-image.npy").shape == (8, 16)
    # idempotent: a second run embeds nothing and changes nothing
    assert extract(*args, "--tokens") == 0
    assert sorted(read_ids(out)) == sorted(ids)
    assert json.loads((out / "manifest.json").read_text())["counts"]["this_run"] == 0


def test_resuming_with_other_settings_is_refused_unless_overwrite(data_dir, model_store, tmp_path, capsys, testkit):
    out = tmp_path / "out"
    base = [str(data_dir), str(out), "--store", str(model_store), "--no-plot"]
    assert extract(*base, "--dimensions", "8") == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["dimensions"] == 8 and len(settings["models"]["image"]["manifest_sha256"]) == 64
    before = embeddings_by_id(out, "tiny-text")
    capsys.readouterr()
    for changed, what in (
        (["--dimensions", "4"], "dimensions: 8 -> 4"),
        (["--dimensions", "8", "--no-normalize"], "normalize: True -> False"),
        (["--dimensions", "8", "--tokens"], "tokens: False -> True"),
        (["--dimensions", "8", "--pooling", "mean"], "pooling: None -> 'mean'"),
    ):
        assert extract(*base, *changed) != 0
        err = capsys.readouterr().err
        assert what in err and "--overwrite" in err, err
    after = embeddings_by_id(out, "tiny-text")  # nothing was added to or mixed into the output
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    assert extract(*base, "--dimensions", "4", "--overwrite") == 0
    assert {v.shape for v in embeddings_by_id(out, "tiny-text").values()} == {(4,)}
    assert json.loads((out / "settings.json").read_text())["dimensions"] == 4
    assert extract(*base, "--dimensions", "4") == 0  # the same settings resume
    testkit.record_reliability(
        "Extraction resume with other settings",
        tried="re-runs of a finished output with dimensions, normalize, tokens or pooling changed",
        faults="settings that would mix two kinds of vectors in one output",
        outcome="each refused (exit != 0) naming the difference; output unchanged; --overwrite starts anew",
        figures="4 of 4 changes refused",
    )


def embeddings_by_id(out: Path, model: str) -> dict[str, np.ndarray]:
    table = ds.dataset(out / "embeddings" / model).to_table(columns=["id", "embedding"])
    ids, vectors = table["id"].to_pylist(), table["embedding"].to_pylist()
    return {i: np.asarray(v, dtype=np.float32) for i, v in zip(ids, vectors, strict=True)}


def test_in_process_engines_agree(data_dir, model_store, tmp_path):
    """--engine auto (the default), onnxruntime and openvino run the same graph in this process."""
    outs = {}
    for engine in ("auto", "onnxruntime", "openvino"):
        out = outs[engine] = tmp_path / engine
        assert (
            extract(str(data_dir), str(out), "--store", str(model_store), "--engine", engine, "--modality", "text") == 0
        )
        assert json.loads((out / "manifest.json").read_text())["engine"] == engine
    ref = embeddings_by_id(outs["onnxruntime"], "tiny-text")
    assert len(ref) == 8
    for engine in ("auto", "openvino"):
        got = embeddings_by_id(outs[engine], "tiny-text")
        assert got.keys() == ref.keys()
        for key, vector in ref.items():
            np.testing.assert_allclose(got[key], vector, atol=1e-4)


def test_server_engine_matches_local_and_reports_bad_rows(live_gateway, model_store, data_dir, tmp_path):
    manifest = tmp_path / "inputs.jsonl"
    rows = [
        {"id": "t1", "text": "hello world"},
        {"id": "img", "path": str(data_dir / "cats" / "0.png")},
        {"id": "rel", "path": "data/dogs/1.png", "label": "dog"},
        {"id": "bad-img", "path": str(data_dir / "broken.png")},
        {"id": "missing", "path": str(data_dir / "nope.png")},
        {"text": "no id"},
        {"id": "both", "text": "x", "path": "y.png"},
        {"id": "t1", "text": "duplicate"},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    out_s, out_l = tmp_path / "server", tmp_path / "local"
    assert extract(str(manifest), str(out_s), "--engine", "server", "--server", live_gateway) == 0
    assert extract(str(manifest), str(out_l), "--store", str(model_store)) == 0
    assert sorted(read_ids(out_s)) == ["img", "rel", "t1"]
    errors = {
        json.loads(x)["source"] if json.loads(x)["id"].startswith("inputs") else json.loads(x)["id"]: json.loads(x)[
            "reason"
        ]
        for x in (out_s / "errors.jsonl").read_text().splitlines()
    }
    assert "bad-img" in errors and "missing" in errors and "both" in errors and "t1" in errors
    assert "inputs.jsonl:6" in errors and "inputs.jsonl:9" in errors  # no id; invalid JSON
    srv = ds.dataset(out_s / "embeddings").to_table().sort_by("id")
    loc = ds.dataset(out_l / "embeddings").to_table().sort_by("id")
    assert srv.column("id").to_pylist() == loc.column("id").to_pylist()
    np.testing.assert_allclose(
        np.stack(srv.column("embedding").to_pylist()), np.stack(loc.column("embedding").to_pylist()), atol=1e-5
    )


def test_stdin_and_csv_inputs(model_store, tmp_path, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("first line\nsecond line\n\nthird\n"))
    assert extract("-", str(tmp_path / "o1"), "--store", str(model_store)) == 0
    assert sorted(read_ids(tmp_path / "o1")) == ["1", "2", "4"]
    csv = tmp_path / "m.csv"
    csv.write_text("id,text,label\na,alpha,x\nb,beta,y\n,gamma,z\n")
    assert extract(str(csv), str(tmp_path / "o2"), "--store", str(model_store)) == 0
    assert sorted(read_ids(tmp_path / "o2")) == ["a", "b"] and error_ids(tmp_path / "o2") == ["m.csv:4"]


@pytest.mark.slow
def test_ray_engine(data_dir, model_store, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        out = tmp_path / "out"
        args = [str(data_dir), str(out), "--engine", "ray", "--store", str(model_store), "--workers", "2"]
        assert extract(*args, "--batch-size", "3", "--shard-size", "5") == 0
        ids = read_ids(out)
        assert len(ids) == len(set(ids)) == 18 and error_ids(out) == ["broken.png"]
        assert extract(*args) == 0 and sorted(read_ids(out)) == sorted(ids)  # resumed: nothing redone
    finally:
        ray.shutdown()


@pytest.fixture
def slow_gateway(testkit, model_store):
    """A server whose engine takes 30 ms per batch, so an extraction can be killed half-way."""
    from d2v.core.manifest import ModelManifest
    from d2v.runtime.engines.fake import FakeEngine
    from d2v.server.app import create_app

    engine = FakeEngine(ModelManifest.load(model_store / "tiny-text"), model_store / "tiny-text", delay_s=0.03)
    with testkit.live_server(create_app(testkit.make_settings(model_store), engines=[engine])) as (url, _):
        yield url


def test_resume_after_sigkill_gives_every_id_exactly_once(slow_gateway, tmp_path, testkit):
    manifest = tmp_path / "texts.jsonl"
    n = 300
    manifest.write_text("".join(json.dumps({"id": f"doc{i:04d}", "text": f"text number {i}"}) + "\n" for i in range(n)))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "d2v",
        "extract",
        str(manifest),
        str(out),
        "--engine",
        "server",
        "--server",
        slow_gateway,
        "--batch-size",
        "2",
        "--shard-size",
        "6",
        "--workers",
        "2",
        "--no-progress",
        "--no-plot",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = out / "ledger.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not ledger.exists() or len(ledger.read_text().splitlines()) < 5):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = len(read_ids(out))
    assert 0 < done_before < n, "the first run should be killed half-way"
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    ids = read_ids(out)
    assert len(ids) == n and len(set(ids)) == n
    summary = json.loads((out / "manifest.json").read_text())
    assert summary["counts"]["resumed"] >= done_before and summary["counts"]["embedded"] == n
    assert not list(out.rglob("*.tmp"))
    testkit.record_reliability(
        "Extraction resume after kill -9 (server engine)",
        tried=f"{n} texts, 6-row shards, 2 workers against a slowed gateway",
        faults="SIGKILL of `d2v extract` after 5 committed shards",
        outcome="re-run completed; every id exactly once, no temporary files left",
        figures=f"{done_before} ids committed before the kill, {n} after the re-run",
    )


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux ``/proc``), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        out.extend(kids)
        todo.extend(kids)
    return out


@pytest.mark.slow
def test_ray_resume_after_sigkill_keeps_committed_chunks(model_store, tmp_path):
    """A real ``--engine ray`` run, SIGKILLed after its first chunk commit, then re-run to completion."""
    pytest.importorskip("ray")
    data = tmp_path / "texts"
    data.mkdir()
    n = 48
    for i in range(n):
        (data / f"t{i:03d}.txt").write_text(f"sentence number {i}")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "d2v", "extract", str(data), str(out), "--engine", "ray"]
    cmd += ["--store", str(model_store), "--workers", "1", "--batch-size", "2", "--shard-size", "4"]
    cmd += ["--ray-chunk-shards", "1", "--no-progress", "--no-plot"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "first.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        ledger = out / "ledger.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if ledger.exists() and ledger.read_text().strip():
                break
            time.sleep(0.01)
        ray_procs = _descendants(proc.pid)  # the local Ray cluster this driver started
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in ray_procs:  # Ray's agents outlive a SIGKILLed driver for a while: end them now
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    first_ledger = ledger.read_text().splitlines()
    committed = {p: p.stat().st_mtime_ns for p in out.glob("embeddings/*/part-*.parquet")}
    done_before = len(read_ids(out))
    assert first_ledger and 0 < done_before < n, "the first run should be killed after its first chunk"

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ids = read_ids(out)
    assert len(ids) == n and len(set(ids)) == n
    # the committed chunks were kept as they were, not recomputed: the re-run embedded only the rest
    assert {p: p.stat().st_mtime_ns for p in committed} == committed
    assert ledger.read_text().splitlines()[: len(first_ledger)] == first_ledger
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["resumed"] == done_before and counts["this_run"] == n - done_before and counts["embedded"] == n
    assert not list(out.rglob("*.tmp")) and not (out / "_staging").exists()
