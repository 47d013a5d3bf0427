"""``d2v extract``: every engine, bad inputs, bad manifest rows, bounded in-flight requests, and resume at partition
granularity after SIGKILLed runs (server, in-process and Ray engines)."""

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
    """read_binary_files over the directory's partitions -> preprocess -> 2 engine actors -> per-partition writes:
    the same ids, errors and vectors as the in-process engine."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        out = tmp_path / "out"
        args = [str(data_dir), str(out), "--engine", "ray", "--store", str(model_store), "--workers", "2"]
        args += ["--num-cpus", "0.5", "--batch-size", "3", "--partition-size", "5", "--no-plot"]
        assert extract(*args) == 0
        ids = read_ids(out)
        assert len(ids) == len(set(ids)) == 18 and error_ids(out) == ["broken.png"]
        ledger = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]
        assert sorted(e["partition"] for e in ledger) == [0, 1, 2, 3]  # 19 files in partitions of 5
        summary = json.loads((out / "manifest.json").read_text())["summary"]
        assert summary["worker_peak_rss_mb"] > 0 and summary["partitions"] == 4
        assert extract(*args) == 0 and sorted(read_ids(out)) == sorted(ids)  # resumed: nothing redone
        assert len((out / "ledger.jsonl").read_text().splitlines()) == 4
        local = tmp_path / "local"
        assert extract(str(data_dir), str(local), "--store", str(model_store), "--engine", "onnxruntime") == 0
        for model in ("tiny-text", "tiny-image", "tiny-audio"):
            ray_vectors, local_vectors = embeddings_by_id(out, model), embeddings_by_id(local, model)
            assert ray_vectors.keys() == local_vectors.keys()
            for key, vector in local_vectors.items():
                np.testing.assert_allclose(ray_vectors[key], vector, atol=1e-4)
        refused = [str(data_dir), str(tmp_path / "refused"), "--engine", "ray", "--store", str(model_store)]
        assert extract(*refused, "--workers", "4", "--num-cpus", "0.5") != 0  # 2 CPUs: none left for the tasks
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


class InFlight:
    """ASGI wrapper counting the embedding requests being answered at once."""

    def __init__(self, app) -> None:
        self.app, self.now, self.peak, self.total = app, 0, 0, 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/embed"):
            return await self.app(scope, receive, send)
        self.now += 1
        self.total += 1
        self.peak = max(self.peak, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


def test_server_engine_keeps_at_most_workers_requests_in_flight(testkit, model_store, tmp_path):
    from d2v.core.manifest import ModelManifest
    from d2v.runtime.engines.fake import FakeEngine
    from d2v.server.app import create_app

    # 50 ms per batch, so on a loaded machine the 3 workers' requests still overlap (the lower bound below)
    engine = FakeEngine(ModelManifest.load(model_store / "tiny-text"), model_store / "tiny-text", delay_s=0.05)
    counter = InFlight(create_app(testkit.make_settings(model_store), engines=[engine]))
    manifest = tmp_path / "texts.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(120)))
    with testkit.live_server(counter) as (url, _):
        args = [str(manifest), str(tmp_path / "out"), "--engine", "server", "--server", url, "--workers", "3"]
        assert extract(*args, "--batch-size", "2", "--partition-size", "10", "--no-plot") == 0
    assert sorted(read_ids(tmp_path / "out")) == sorted(f"d{i}" for i in range(120))
    assert counter.total == 60 and 2 <= counter.peak <= 3, (counter.total, counter.peak)


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
        faults="SIGKILL of `d2v extract` after 5 committed partitions",
        outcome="re-run completed; every id exactly once, no temporary files left",
        figures=f"{done_before} ids committed before the kill, {n} after the re-run",
    )


def test_local_engine_survives_repeated_sigkills_at_partition_granularity(model_store, tmp_path, testkit):
    """The in-process engine killed three times at whatever point it has reached, then run to the end: every
    id once, and every partition's shard holds exactly that partition's rows of the manifest."""
    n, size = 1500, 25
    manifest = tmp_path / "texts.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"d{i:05d}", "text": f"text {i}"}) + "\n" for i in range(n)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "d2v", "extract", str(manifest), str(out), "--store", str(model_store)]
    cmd += ["--engine", "onnxruntime", "--batch-size", "2", "--partition-size", str(size), "--workers", "2"]
    cmd += ["--no-progress", "--no-plot"]
    kills = []
    for _ in range(3):
        before = len(ledger_entries_safe(out))
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(ledger_entries_safe(out)) < before + 3:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        kills.append(len(ledger_entries_safe(out)))
    assert 0 < kills[0] < kills[-1] < n // size, kills
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ids = read_ids(out)
    assert len(ids) == n and len(set(ids)) == n
    entries = ledger_entries(out)
    assert sorted(e["partition"] for e in entries) == list(range(n // size))
    for e in entries:
        (rel,) = e["shards"]
        got = ds.dataset(out / rel).to_table(columns=["id"]).column("id").to_pylist()
        k = e["partition"]
        assert sorted(got) == [f"d{i:05d}" for i in range(k * size, (k + 1) * size)]
    testkit.record_reliability(
        "Extraction resume after repeated kill -9 (in-process engine)",
        tried=f"{n} texts in {n // size} partitions of {size}, 2 engine workers",
        faults="3 SIGKILLs of `d2v extract`, each after >= 3 more partition commits, wherever it then was",
        outcome="re-run completed; every id exactly once; each partition's shard holds exactly its manifest rows",
        figures="partitions committed at the kills: " + ", ".join(map(str, kills)) + f"; {n // size} at the end",
    )


def ledger_entries_safe(out: Path) -> list[str]:
    """Complete ledger lines while a run may be appending one."""
    path = out / "ledger.jsonl"
    return path.read_text().split("\n")[:-1] if path.exists() else []


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


def ledger_entries(out: Path) -> list[dict]:
    path = out / "ledger.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_ray_resume_after_sigkill_keeps_committed_partitions(model_store, tmp_path, testkit):
    """A real ``--engine ray`` run over a manifest, SIGKILLed after its first partition commit, then re-run."""
    pytest.importorskip("ray")
    manifest = tmp_path / "texts.jsonl"
    n = 23
    rows = [json.dumps({"id": f"t{i:03d}", "text": f"sentence number {i}"}) for i in range(n)]
    manifest.write_text("\n".join(rows[:5] + ["{not json"] + rows[5:]) + "\n")  # partition 1 holds a bad row
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "d2v", "extract", str(manifest), str(out), "--engine", "ray"]
    cmd += ["--store", str(model_store), "--workers", "1", "--batch-size", "2", "--partition-size", "4"]
    cmd += ["--ray-window", "2", "--no-progress", "--no-plot"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = tmp_path / "first.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        ledger = out / "ledger.jsonl"
        deadline = time.monotonic() + 240
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
    first = ledger_entries(out)
    committed = {out / rel: (out / rel).stat().st_mtime_ns for e in first for rel in e["shards"]}
    done_before = sum(e["items"] for e in first)
    assert first and 0 < done_before < n + 1, "the first run should be killed after its first partition"

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ids = read_ids(out)
    assert sorted(ids) == sorted(f"t{i:03d}" for i in range(n))  # every id exactly once
    assert [r for r in error_ids(out) if r.startswith("texts")] == ["texts.jsonl:6"]
    # the committed partitions were kept as they were, not recomputed: the re-run embedded only the rest
    assert {p: p.stat().st_mtime_ns for p in committed} == committed
    entries = ledger_entries(out)
    assert entries[: len(first)] == first and sorted(e["partition"] for e in entries) == list(range(6))
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["resumed"] == done_before and counts["this_run"] == n + 1 - done_before
    assert counts["embedded"] == n and counts["bad_rows"] == 1
    assert not list(out.rglob("*.tmp"))
    testkit.record_reliability(
        "Extraction resume after kill -9 (Ray engine)",
        tried=f"{n} texts + 1 bad row in 4-row partitions, Ray Data windows of 2 partitions, 1 engine actor",
        faults="SIGKILL of the driver after its first partition commit (its local Ray cluster killed too)",
        outcome="re-run completed; every id exactly once; committed partitions' files untouched, not recomputed",
        figures=f"{len(first)} partitions ({done_before} rows) committed before the kill, 6 ({n + 1}) after",
    )
