"""``--engine ray`` on a running Ray cluster (``RAY_ADDRESS``), started by the test with ``ray start --head``
as an operator would: without the cluster's token the job stops with a message that says what to set; with
it, the job joins that cluster instead of starting its own, reads a Parquet manifest on its workers and
commits every partition."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A one-node Ray cluster on loopback; yields its address and session folder, stops it afterwards."""
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).with_name("ray")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    start = [str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    done = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    try:
        session = Path("/tmp/ray/session_latest").resolve()
        yield f"127.0.0.1:{port}", session
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_extract_joins_the_cluster_at_ray_address(ray_head, model_store, tmp_path):
    address, session = ray_head
    n = 37
    ids = [f"r{i:03d}" for i in range(n)]
    manifest = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": ids, "text": [f"sentence {i}" for i in range(n)]}), manifest, row_group_size=16)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "d2v", "extract", str(manifest), str(out), "--engine", "ray", "--store"]
    cmd += [str(model_store), "--workers", "1", "--num-cpus", "0.5", "--partition-size", "5", "--batch-size", "4"]
    cmd += ["--no-progress", "--no-plot"]
    env = {**os.environ, "RAY_ADDRESS": address, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_AUTH_MODE", None)
    refused = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert refused.returncode != 0 and "RAY_AUTH_MODE=token" in refused.stderr, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    env["RAY_AUTH_MODE"] = "token"  # `ray start` made the token (~/.ray/auth_token): a client must opt in to send it
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]

    got = ds.dataset(out / "embeddings", format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(got) == ids
    ledger = [json.loads(x) for x in (out / "ledger.jsonl").read_text().splitlines()]
    assert sorted(e["partition"] for e in ledger) == list(range(8)) and sum(e["items"] for e in ledger) == n
    # a partition travels as one block: one file under its usual name, not pieces
    assert all(e["shards"] == [f"embeddings/tiny-text/part-{e['partition']:06d}.parquet"] for e in ledger), ledger
    # the driver ran in the cluster started above (its log is in that cluster's session), not in one of its own
    assert Path("/tmp/ray/session_latest").resolve() == session
    assert list((session / "logs").glob(f"python-core-driver-*_{proc.pid}.log")), sorted(
        p.name for p in (session / "logs").iterdir()
    )[:50]
