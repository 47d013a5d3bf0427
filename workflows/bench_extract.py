"""``d2v bench extract``: batch extraction throughput per engine vs calling the engine in process, and the
driver's peak RSS at two corpus sizes.

On the same short-text JSONL corpus: the in-process engine called directly on batches (the reference, no
extraction job around it), then ``d2v extract`` with ``--engine onnxruntime`` (in process), ``--engine ray``
(``--ray-actors`` engine actors on a local Ray) and ``--engine server`` (a ``d2v serve`` on a free 127.0.0.1
port). Each ``d2v extract`` runs in its own process; its items/s and driver peak RSS come from its
``manifest.json`` summary. Then the in-process engine on ``--rss-sizes`` rows (default 20k and 500k): the
driver's peak RSS must not grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d2v.core.errors import NotFound


@dataclass(frozen=True)
class ExtractBenchOptions:
    store: Path
    model: str | None = None
    items: int = 20_000  # throughput corpus
    rss_sizes: tuple[int, ...] = (20_000, 500_000)
    batch_size: int = 64
    partition_size: int = 1024
    ray_actors: int = 2
    engines: tuple[str, ...] = ("local", "ray", "server")


def write_corpus(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"doc{i:08d}", "text": f"short text number {i} about things"}) + "\n")
    return path


def _text_model(opts: ExtractBenchOptions) -> tuple[Any, Path]:
    from d2v.runtime.store import discover

    for manifest, model_dir in discover(opts.store, [opts.model] if opts.model else []):
        if manifest.modality == "text":
            return manifest, model_dir
    raise NotFound(f"no text model in {opts.store}: run `d2v quickstart` or pass --store / --model")


def in_process_items_per_s(opts: ExtractBenchOptions, corpus: Path, workers: int) -> float:
    """The reference: the same engine as ``--engine onnxruntime`` and the same batches, without the job."""
    from concurrent.futures import ThreadPoolExecutor

    from d2v.extract.backends import LocalModel, Options
    from d2v.extract.inputs import Item

    manifest, model_dir = _text_model(opts)
    model = LocalModel(manifest, model_dir, Options(runtime="onnxruntime"), workers)
    items = [Item(r["id"], "text", text=r["text"]) for r in map(json.loads, corpus.read_text().splitlines())]
    batches = [items[i : i + opts.batch_size] for i in range(0, len(items), opts.batch_size)]
    model.embed(batches[0])  # load the engines outside the timing
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(model.embed, batches))
    elapsed = time.perf_counter() - start
    model.close()
    return round(len(items) / elapsed, 1)


def run_extract(opts: ExtractBenchOptions, corpus: Path, out: Path, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "d2v", "extract", str(corpus), str(out), "--store", str(opts.store)]
    cmd += ["--batch-size", str(opts.batch_size), "--partition-size", str(opts.partition_size)]
    cmd += ["--no-plot", "--no-progress", "--overwrite", *extra]
    cmd += ["--model", opts.model] if opts.model else []
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"d2v extract {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "manifest.json").read_text())["summary"]


def _serve(opts: ExtractBenchOptions) -> tuple[subprocess.Popen, str]:
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "d2v", "serve", "--store", str(opts.store), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--engine", "onnxruntime", "--grpc-port", "0"]
    cmd += ["--model", opts.model] if opts.model else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("d2v serve did not become healthy in 120 s")


def bench_extract(opts: ExtractBenchOptions) -> dict[str, Any]:
    """Every measurement of the bench as one JSON-able dict."""
    import os

    _text_model(opts)
    workers = max(1, (os.cpu_count() or 2) // 2)
    result: dict[str, Any] = {"items": opts.items, "batch_size": opts.batch_size, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="d2v-bench-extract-") as tmp:
        root = Path(tmp)
        corpus = write_corpus(root / "corpus.jsonl", opts.items)
        reference = in_process_items_per_s(opts, corpus, workers)
        rows = [{"engine": "in-process engine (reference)", "items_per_s": reference, "vs_reference": 1.0}]
        runs = {
            "local": ("--engine onnxruntime", ["--engine", "onnxruntime", "--workers", str(workers)]),
            "ray": (
                f"--engine ray ({opts.ray_actors} actors)",
                ["--engine", "ray", "--workers", str(opts.ray_actors), "--num-cpus", str(0.5)],
            ),
        }
        for key in ("local", "ray"):
            if key in opts.engines:
                label, extra = runs[key]
                rows.append(_row(label, run_extract(opts, corpus, root / key, *extra), reference))
        if "server" in opts.engines:
            proc, url = _serve(opts)
            try:
                extra = ["--engine", "server", "--server", url, "--workers", "4"]
                rows.append(
                    _row("--engine server (HTTP)", run_extract(opts, corpus, root / "server", *extra), reference)
                )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        result["throughput"] = rows
        rss = []
        for n in opts.rss_sizes:
            sized = write_corpus(root / f"rss-{n}.jsonl", n)
            summary = run_extract(opts, sized, root / f"rss-{n}", "--engine", "onnxruntime", "--workers", str(workers))
            rss.append(
                {"rows": n, "driver_peak_rss_mb": summary["driver_peak_rss_mb"], "items_per_s": summary["items_per_s"]}
            )
            (root / f"rss-{n}.jsonl").unlink()
        result["rss"] = rss
        one = run_extract(opts, corpus, root / "w1", "--engine", "onnxruntime", "--workers", "1")
        two = run_extract(opts, corpus, root / "w2", "--engine", "onnxruntime", "--workers", "2")
        result["per_worker_rss_mb"] = round(two["driver_peak_rss_mb"] - one["driver_peak_rss_mb"], 1)
    return result


def _row(label: str, summary: dict[str, Any], reference: float) -> dict[str, Any]:
    out = {
        "engine": label,
        "items_per_s": summary["items_per_s"],
        "vs_reference": round(summary["items_per_s"] / reference, 2),
    }
    out["driver_peak_rss_mb"] = summary["driver_peak_rss_mb"]
    if summary.get("worker_peak_rss_mb"):
        out["worker_peak_rss_mb"] = summary["worker_peak_rss_mb"]
    return out


def format_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['items']:,} short texts, batch {result['batch_size']}, {result['cpus']} CPUs",
        "",
        "| engine | items/s | vs in-process engine | driver peak RSS (MB) | worker peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["throughput"]:
        lines.append(
            f"| {r['engine']} | {r['items_per_s']:,.0f} | {r['vs_reference']:.2f}x | "
            f"{r.get('driver_peak_rss_mb', '')} | {r.get('worker_peak_rss_mb', '')} |"
        )
    lines += ["", "| corpus rows | driver peak RSS (MB) | items/s |", "|---:|---:|---:|"]
    for r in result["rss"]:
        lines.append(f"| {r['rows']:,} | {r['driver_peak_rss_mb']} | {r['items_per_s']:,.0f} |")
    lines += ["", f"Each extra in-process engine worker: {result['per_worker_rss_mb']} MB of driver RSS."]
    return "\n".join(lines)


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """``d2v bench extract`` (argparse only; the work is imported when it runs)."""
    p = bench_subparsers.add_parser(
        "extract",
        help="batch extraction items/s per engine (in process, Ray, server) vs the engine alone; driver RSS",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
    )
    p.add_argument("--store", type=Path, default=None, help="model store with a text model (default: $D2V_HOME/models)")
    p.add_argument("--model", default=None, help="text model name or directory (default: the store's first)")
    p.add_argument("--items", type=int, default=20_000, help="rows of the throughput corpus")
    p.add_argument("--rss-sizes", type=int, nargs="+", default=[20_000, 500_000], help="corpus sizes for RSS")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ray-actors", type=int, default=2)
    p.add_argument("--engines", nargs="+", choices=["local", "ray", "server"], default=["local", "ray", "server"])
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from d2v.core.paths import default_store

    opts = ExtractBenchOptions(
        store=args.store or default_store(),
        model=args.model,
        items=args.items,
        rss_sizes=tuple(args.rss_sizes),
        batch_size=args.batch_size,
        ray_actors=args.ray_actors,
        engines=tuple(args.engines),
    )
    result = bench_extract(opts)
    print(format_markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
