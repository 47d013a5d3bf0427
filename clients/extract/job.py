"""``d2v extract``: walk the partition plan, skip committed partitions, embed the rest, commit each, report.

The in-process and server engines run here: the driver streams partitions from the plan, keeps at most
``2 * workers`` batches in flight on a thread pool (each worker an engine, or one request to the server at a
time), and commits a partition (its shards, its error file, then its ledger line) as soon as its last batch
is back. Memory is the partitions in flight, whatever the corpus size. ``--engine ray`` is ``ray_job``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d2v.core.errors import ConfigError
from d2v.core.paths import default_store

from . import report
from .backends import Backend, LocalBackend, ModelRef, Options, ServerBackend, output_settings
from .connection import api_key, grpc_target, server_url
from .inputs import Item, open_source
from .plan import Partition, Plan
from .progress import Progress, Summary, peak_rss_mb
from .shards import Row, ShardStore, bad_row_record, clear_output, error_record, rows_to_table, write_partition

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


def partition_entry(part: Partition, tables: dict[str, Any], errors: list[dict[str, Any]], root: str) -> dict:
    """Write a finished partition's files; the ledger entry to record once they are there."""
    entry = write_partition(root, part.index, tables, errors)
    return {**entry, "items": part.size, "first": part.first, "last": part.last}


@dataclass
class _OpenPartition:
    part: Partition
    pending: int  # batches not back yet
    done: dict[int, tuple[str, list[Row]]] = field(default_factory=dict)  # batch number -> (modality, rows)


class PartitionRunner:
    """Streams the plan through a backend with bounded in-flight batches; commits partitions as they finish."""

    def __init__(self, backend: Backend, store: ShardStore, plan: Plan, args: argparse.Namespace, workers: int):
        self.backend, self.store, self.plan, self.args, self.workers = backend, store, plan, args, workers
        self.options = options_from(args)
        self.refs: dict[str, ModelRef] = {}
        self.open: dict[int, _OpenPartition] = {}
        self.in_flight: dict[Future[list[Row]], tuple[int, int, str]] = {}

    def bind(self, modalities: set[str]) -> None:
        """Resolve (and check against ``settings.json``) the model of every modality not seen yet."""
        new = {m: self.backend.model_for(m) for m in sorted(modalities - self.refs.keys())}
        if new:
            self.store.bind_settings(self.plan.settings(output_settings(new, self.options)))
            self.refs.update(new)

    def run(self, progress: Progress) -> None:
        self.progress = progress
        self.bind(set(self.store.recorded_models()))  # a resumed output is checked before any work
        self.store.bind_settings(self.plan.settings(output_settings({}, self.options)))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="d2v-extract") as self.pool:
            resumed = self.store.state.partitions > 0
            plan = self.plan.pending if resumed else self.plan.partitions  # a resume parses only what is left
            for part in plan(skip=self.store.state.has):
                self.bind({it.modality for it in part.items})
                work = list(batches(part.items, self.args.batch_size))
                self.open[part.index] = _OpenPartition(part, len(work))
                if not work:
                    self.commit(part.index)
                for number, (modality, batch) in enumerate(work):
                    while len(self.in_flight) >= 2 * self.workers:
                        self.drain()
                    future = self.pool.submit(self.backend.embed, modality, batch)
                    self.in_flight[future] = (part.index, number, modality)
            while self.in_flight:
                self.drain()

    def drain(self) -> None:
        done, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
        for future in done:
            index, number, modality = self.in_flight.pop(future)
            rows = future.result()  # a backend raises only for what is not one input's fault: stop the job
            ref = self.refs[modality]
            for row in rows:
                row.model = ref.name
            op = self.open[index]
            op.done[number] = (modality, rows)
            op.pending -= 1
            self.progress.items(len(rows))
            if op.pending == 0:
                self.commit(index)

    def commit(self, index: int) -> None:
        op = self.open.pop(index)
        by_modality: dict[str, list[Row]] = defaultdict(list)
        for number in sorted(op.done):  # input order, whatever order the batches came back in
            modality, rows = op.done[number]
            by_modality[modality].extend(rows)
        tables, errors = {}, [bad_row_record(b) for b in op.part.bad_rows]
        for modality, rows in by_modality.items():
            ref = self.refs[modality]
            tables[ref.name] = rows_to_table([r for r in rows if r.error is None], ref.dims)
            errors.extend(error_record(r) for r in rows if r.error is not None)
        self.store.record(partition_entry(op.part, tables, errors, self.store.uri))
        self.progress.items(len(op.part.bad_rows))
        self.progress.partition()


def run_extract(args: argparse.Namespace) -> int:
    """The whole job. Returns 0 also when some inputs failed: they are listed in ``errors.jsonl``.

    Raises:
        ConfigError, NotFound: bad arguments, no model for a modality, an unreadable input source.
    """
    if args.batch_size < 1 or args.partition_size < 1 or getattr(args, "ray_window", 0) < 0:
        raise ConfigError("--batch-size and --partition-size must be positive, --ray-window not negative")
    start = time.perf_counter()
    plan = Plan(open_source(args.input, args.modality), args.partition_size)
    if args.overwrite:
        clear_output(args.out_dir)
    store = ShardStore(args.out_dir)
    resumed = store.state.items
    workers = args.workers or default_workers(args.engine)
    total = plan.total_rows() if args.progress else None
    worker_rss = None
    with Progress(total, plan.size, resumed, store.state.partitions, args.progress) as progress:
        if args.engine == "ray":
            from .ray_job import run_ray

            refs, worker_rss = run_ray(store, plan, args, model_store(args), options_from(args), workers, progress)
        else:
            backend = make_backend(args, workers)
            try:
                runner = PartitionRunner(backend, store, plan, args, workers)
                runner.run(progress)
                refs = runner.refs
            finally:
                backend.close()
    summary = Summary(
        rows=store.state.ok,
        errors=store.state.errors + store.state.bad_rows,
        partitions=store.state.partitions,
        this_run=store.state.items - resumed,
        elapsed_s=time.perf_counter() - start,
        driver_peak_rss_mb=peak_rss_mb(),
        worker_peak_rss_mb=worker_rss,
    )
    return finish(store, args, resumed, refs, summary)


_RECORDED_OPTIONS = ("pooling", "tokens", "normalize", "dimensions", "batch_size", "partition_size")


def finish(
    store: ShardStore, args: argparse.Namespace, resumed: int, refs: dict[str, ModelRef], summary: Summary
) -> int:
    """Merge errors, write exports, the PCA PNG and the manifest; print the summary."""
    errors_loc = store.merged_errors()
    npy = report.write_npy(store) if args.format == "npy" else []
    png = report.plot_pca(store, caption=summary.caption()) if args.plot else None
    state = store.state
    manifest = {
        "format": "d2v-extract",
        "version": 2,
        "input": str(args.input),
        "engine": args.engine,
        "options": {k: getattr(args, k) for k in _RECORDED_OPTIONS},
        "models": {
            r.name: {"modality": m, "dims": r.dims, "manifest_sha256": r.sha256, "path": r.path}
            for m, r in refs.items()
        },
        "counts": {
            "inputs": state.items,
            "embedded": state.ok,
            "failed": state.errors,
            "bad_rows": state.bad_rows,
            "partitions": state.partitions,
            "this_run": summary.this_run,
            "resumed": resumed,
        },
        "throughput": {"elapsed_s": round(summary.elapsed_s, 3), "items_per_s": summary.items_per_s},
        "summary": summary.as_dict(),
        "ledger": store.ledger_name,
        "errors_file": "errors.jsonl",
        "npy": npy,
        "plot": "pca.png" if png else None,
    }
    report.write_manifest(store, manifest)
    print(
        f"d2v extract: {summary.caption()}; {resumed} already done; errors in {errors_loc.uri}; output in "
        f"{store.uri}" + ("; plot pca.png" if png else ""),
        file=sys.stderr,
    )
    return 0
