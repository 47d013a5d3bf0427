"""The driver's peak RSS does not grow with the corpus: the partition plan streams the input and the ledger,
not the ids, is what resume reads. Measured by the job itself (``manifest.json`` ``summary``), each size in a
fresh ``d2v extract`` process. CI runs 10k vs 200k rows (at 0.45 KB per row, what reading every input up
front cost, 200k rows alone would break the bound); ``d2v bench extract`` measures 20k vs 500k.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RSS_RATIO, RSS_SLACK_MB = 1.15, 40.0  # the bound: big <= 1.15 x small + 40 MB


def write_texts(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"doc{i:07d}", "text": f"short text number {i} about things"}) + "\n")
    return path


def driver_rss(manifest: Path, out: Path, store: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "d2v", "extract", str(manifest), str(out), "--store", str(store)]
    cmd += ["--engine", "onnxruntime", "--batch-size", "256", "--no-plot", "--no-progress", *extra]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.slow
def test_driver_peak_rss_is_flat_in_the_corpus_size(model_store, tmp_path, testkit):
    small, big = 10_000, 200_000
    runs = {}
    for n in (small, big):
        manifest = write_texts(tmp_path / f"t{n}.jsonl", n)
        runs[n] = driver_rss(manifest, tmp_path / f"out{n}", model_store)
        assert runs[n]["counts"]["embedded"] == n
    rss = {n: r["summary"]["driver_peak_rss_mb"] for n, r in runs.items()}
    assert rss[big] <= RSS_RATIO * rss[small] + RSS_SLACK_MB, rss
    # resuming the finished 200k output reads the ledger (196 lines), not 200k ids
    again = driver_rss(tmp_path / f"t{big}.jsonl", tmp_path / f"out{big}", model_store)
    assert again["counts"]["this_run"] == 0 and again["counts"]["resumed"] == big
    resume_rss = again["summary"]["driver_peak_rss_mb"]
    assert resume_rss <= RSS_RATIO * rss[small] + RSS_SLACK_MB, resume_rss
    testkit.record_reliability(
        "Extraction driver memory vs corpus size",
        tried=f"{small:,} and {big:,} short texts (JSONL), in-process engine, 1024-row partitions",
        faults="a corpus 20x larger; resuming the finished large output",
        outcome=f"peak RSS within {RSS_RATIO}x + {RSS_SLACK_MB:.0f} MB of the small run's",
        figures=f"{rss[small]:.0f} MB vs {rss[big]:.0f} MB; resume of {big:,} done rows {resume_rss:.0f} MB",
    )
