"""``d2v extract``: read inputs, skip what is already committed, embed the rest, commit shards, report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from d2v.core.errors import ConfigError
from d2v.core.paths import default_store

from . import report
from .backends import Backend, LocalBackend, ModelRef, Options, ServerBackend, output_settings
from .connection import api_key, grpc_target, server_url
from .inputs import Item, read_inputs
from .shards import Row, ShardStore, clear_output

IN_PROCESS = ("auto", "onnxruntime", "openvino")  # --engine values that run the runtime in this process


def options_from(args: argparse.Namespace) -> Options:
    runtime = args.engine if args.engine in IN_PROCESS else "auto"  # Ray actors run the auto choice
    return Options(
        runtime=runtime, pooling=args.pooling, tokens=args.tokens, normalize=args.normalize, dimensions=args.dimensions
    )


def default_workers(engine: str) -> int:
    cpus = os.cpu_count() or 2
    return max(1, cpus // 2) if engine != "server" else 4


def model_store(args: argparse.Namespace) -> Path:
    if args.store:
        return Path(args.store).expanduser()
    return default_store()


def make_backend(args: argparse.Namespace, workers: int) -> Backend:
    if args.engine == "server":
        grpc = getattr(args, "protocol", "http") == "grpc"
        url = grpc_target(args) if grpc else server_url(args)
        return ServerBackend(url, api_key(args), args.model, options_from(args), workers, grpc=grpc)
    return LocalBackend(model_store(args), args.model, options_from(args), workers)


def batches(items: list[Item], size: int) -> Iterator[tuple[str, list[Item]]]:
    """``(modality, batch)`` pairs: items grouped by modality, in input order within each."""
    by_modality: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_modality[item.modality].append(item)
    for modality, group in by_modality.items():
        for start in range(0, len(group), size):
            yield modality, group[start : start + size]


def progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="item", disable=not enabled, dynamic_ncols=True, smoothing=0.1, file=sys.stderr)


def run_batches(
    backend: Backend,
    store: ShardStore,
    pending: list[Item],
    args: argparse.Namespace,
    workers: int,
    refs: dict[str, ModelRef],
) -> None:
    """Embed ``pending`` with ``workers`` batches in flight; commit a shard every ``shard_size`` rows."""
    buffers: dict[str, list[Row]] = defaultdict(list)

    def flush(modality: str, final: bool) -> None:
        buf = buffers[modality]
        while buf and (final or len(buf) >= args.shard_size):
            chunk, buffers[modality] = buf[: args.shard_size], buf[args.shard_size :]
            buf = buffers[modality]
            store.commit(refs[modality].name, refs[modality].dims, chunk)

    bar = progress_bar(len(pending), args.progress)
    in_flight: dict[Future[list[Row]], str] = {}
    with ThreadPoolExecutor(workers, thread_name_prefix="d2v-extract") as pool, bar:

        def drain(how: str) -> None:
            done, _ = wait(in_flight, return_when=how)
            for fut in done:
                modality = in_flight.pop(fut)
                rows = fut.result()
                for row in rows:
                    row.model = refs[modality].name
                buffers[modality].extend(rows)
                bar.update(len(rows))
                flush(modality, final=False)

        for modality, batch in batches(pending, args.batch_size):
            while len(in_flight) >= 2 * workers:
                drain(FIRST_COMPLETED)
            in_flight[pool.submit(backend.embed, modality, batch)] = modality
        while in_flight:
            drain(FIRST_COMPLETED)
    for modality in list(buffers):
        flush(modality, final=True)


def run_extract(args: argparse.Namespace) -> int:
    """The whole job. Returns 0 also when some inputs failed: they are listed in ``errors.jsonl``.

    Raises:
        ConfigError, NotFound: bad arguments, no model for a modality, an unreadable input source.
    """
    if args.batch_size < 1 or args.shard_size < 1 or getattr(args, "ray_chunk_shards", 1) < 1:
        raise ConfigError("--batch-size, --shard-size and --ray-chunk-shards must be positive")
    start = time.perf_counter()
    items, bad_rows = read_inputs(args.input, args.modality)
    out = Path(args.out_dir)
    if args.overwrite:
        clear_output(out)
    store = ShardStore(out)
    store.write_input_errors({"id": b.id, "reason": b.reason, "source": b.source} for b in bad_rows)
    resumed = len(store.state.done)
    pending = [it for it in items if it.id not in store.state.done]
    workers = args.workers or default_workers(args.engine)
    modalities = sorted({it.modality for it in items})
    if args.engine == "ray":
        from .ray_job import run_ray

        refs = run_ray(store, modalities, pending, args, model_store(args), options_from(args), workers)
    else:
        backend = make_backend(args, workers)
        try:
            refs = {m: backend.model_for(m) for m in modalities}
            store.bind_settings(output_settings(refs, options_from(args)))
            run_batches(backend, store, pending, args, workers, refs)
        finally:
            backend.close()
    elapsed = time.perf_counter() - start
    return finish(store, args, items, bad_rows, pending, resumed, refs, elapsed)


def finish(
    store: ShardStore,
    args: argparse.Namespace,
    items: list[Item],
    bad_rows: list[Any],
    pending: list[Item],
    resumed: int,
    refs: dict[str, ModelRef],
    elapsed: float,
) -> int:
    """Merge errors, write exports, the PCA PNG and the manifest; print the summary."""
    out = store.root
    errors_path = store.merged_errors()
    npy = report.write_npy(out) if args.format == "npy" else []
    png = report.plot_pca(out) if args.plot else None
    state = store.state
    manifest = {
        "format": "d2v-extract",
        "version": 1,
        "input": str(args.input),
        "engine": args.engine,
        "options": {k: getattr(args, k) for k in ("pooling", "tokens", "normalize", "dimensions", "batch_size")},
        "models": {
            r.name: {"modality": m, "dims": r.dims, "manifest_sha256": r.sha256, "path": r.path}
            for m, r in refs.items()
        },
        "counts": {
            "inputs": len(items) + len(bad_rows),
            "embedded": state.ok,
            "failed": state.errors,
            "bad_rows": len(bad_rows),
            "this_run": len(pending),
            "resumed": resumed,
        },
        "throughput": {"elapsed_s": round(elapsed, 3), "items_per_s": round(len(pending) / max(elapsed, 1e-9), 2)},
        "shards": [str(p.relative_to(out)) for p in store.shard_files()],
        "errors_file": errors_path.name,
        "npy": npy,
        "plot": png.name if png else None,
    }
    report.write_manifest(out, manifest)
    failed = state.errors + len(bad_rows)
    print(
        f"d2v extract: {state.ok} embedded, {failed} failed ({errors_path}), {len(pending)} this run "
        f"in {elapsed:.1f}s ({manifest['throughput']['items_per_s']} items/s), {resumed} already done; "
        f"output in {out}" + (f"; plot {png}" if png else ""),
        file=sys.stderr,
    )
    return 0
