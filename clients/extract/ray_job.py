"""``--engine ray``: Ray Data over the partition plan, in windows of ``--ray-window`` pending partitions.

The driver cuts the input into spans (``plan.Span``: a partition's index, row count and where its rows lie:
byte range, row range or first/last path; a few dozen bytes each) and runs one Ray Data pipeline per window::

    from_items(the window's spans, one block per run of spans)
    -> map_batches(read_spans)                      # tasks: each reads its spans' rows through the input's
                                                    #   filesystem (a Parquet row group once), one block each
    -> map_batches(preprocess)                      # CPU tasks: read the files + the model's preprocessor
    -> map_batches(EmbedActor, concurrency=--workers,   # an actor pool holding the runtime engines
                   num_cpus=--num-cpus, num_gpus=--num-gpus)
    -> map_batches(write_pieces)                    # tasks: a partition's shards + error file, through the
                                                    #   output's filesystem
and records one ledger line per partition as soon as its rows are all written (a partition Ray split across
blocks is written as pieces and committed once they add up). Nothing is shuffled and nothing waits for the
window: partitions commit while later ones are still being read. The driver holds the window's spans and the
open partitions' piece entries, never rows or vectors, whatever the corpus size.

Runs on a laptop (``ray.init()`` starts a local cluster bound to 127.0.0.1) and on a cluster (``RAY_ADDRESS``;
inputs and ``OUT`` must then be reachable from every node: shared storage or an object store URI). A run
killed mid-window leaves partitions without ledger lines: they run again on the next start, rewriting the
same files; committed partitions are never recomputed. The actor pool lives as long as its window's
pipeline, so the default window is large (1,024 partitions). Ray is an optional extra, imported only here.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from d2v.core.errors import ConfigError, NotFound

from .backends import LocalModel, ModelRef, Options, output_settings, resolve_models
from .plan import Plan, Span
from .progress import Progress
from .ray_stages import EmbedActor, ModelSpecs, preprocess, read_spans, write_pieces
from .shards import ShardStore, merge_pieces

DEFAULT_WINDOW = 1024  # partitions per pipeline (--ray-window 0)


def init_ray(num_cpus: int | None = None) -> None:
    """Join ``RAY_ADDRESS`` when set, else start a local Ray bound to loopback (no dashboard)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:  # Ray's message names the address, not the usual cause
            raise ConfigError(
                f"cannot join the Ray cluster at RAY_ADDRESS={address} ({exc}). Is it running (`ray status`)? "
                "A cluster with token authentication (`ray start`'s default) also needs RAY_AUTH_MODE=token "
                "and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token on this machine)"
            ) from exc
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)


def check_resources(workers: int, cpus_per_actor: float) -> None:
    """The actors must leave CPUs to the read, preprocessing and write tasks, or the pipeline never ends.
    Checked on a local Ray only: an autoscaling cluster (``RAY_ADDRESS``) may not show its CPUs yet.

    Raises:
        ConfigError: ``workers * cpus_per_actor`` is the whole local cluster's CPUs or more.
    """
    import ray

    if os.environ.get("RAY_ADDRESS"):
        return
    total = ray.cluster_resources().get("CPU", 0)
    if workers * cpus_per_actor >= total:
        raise ConfigError(
            f"--workers {workers} x --num-cpus {cpus_per_actor:g} takes all {total:g} CPUs of the Ray cluster and "
            "leaves none for reading, preprocessing and writing: lower --workers or --num-cpus (fractions work)"
        )


def windows(spans: Iterator[Span], size: int) -> Iterator[list[Span]]:
    while window := list(islice(spans, size)):
        yield window


class _Models:
    """The store's models, resolved once; ``bind`` checks each new modality against ``settings.json``."""

    def __init__(self, store: ShardStore, plan: Plan, model_store: Path, names: list[str], options: Options):
        self.store, self.plan, self.model_store, self.options = store, plan, model_store, options
        self.found = resolve_models(model_store, names)
        self.refs: dict[str, ModelRef] = {}

    def bind(self, modalities: set[str]) -> None:
        """Raises: NotFound (no model for a modality), ConfigError (other settings than the output's)."""
        new = {}
        for modality in sorted(modalities - self.refs.keys()):
            if modality not in self.found:
                raise NotFound(f"no {modality} model in {self.model_store}: pass --model NAME_OR_DIR")
            manifest, model_dir = self.found[modality]
            new[modality] = LocalModel(manifest, model_dir, self.options, workers=1).ref
        if new:
            self.store.bind_settings(self.plan.settings(output_settings(new, self.options)))
            self.refs.update(new)

    def specs(self) -> ModelSpecs:
        """Every model found (actors load one when its modality first arrives)."""
        return {m: (manifest.to_dict(), str(model_dir)) for m, (manifest, model_dir) in self.found.items()}


class _Pieces:
    """The window's partitions being written: piece entries until their counts reach the partition's size.
    A piece is known by its files (their names hash its ids), so one reported twice counts once."""

    def __init__(self, window: list[Span]) -> None:
        self.spans = {span.index: span for span in window}
        self.got: dict[int, dict[tuple[str, ...], dict[str, Any]]] = {}

    def add(self, piece: dict[str, Any]) -> dict[str, Any] | None:
        """The partition's ledger entry once ``piece`` completes it, else ``None``."""
        index = piece["partition"]
        self.got.setdefault(index, {})[(*piece["shards"], *piece["error_files"])] = piece
        span = self.spans[index]
        if sum(p["count"] for p in self.got[index].values()) < span.rows:
            return None
        entry = merge_pieces(list(self.got.pop(index).values()))
        del self.spans[index]
        return {**entry, "items": span.rows, "first": span.first, "last": span.last}


def run_ray(
    store: ShardStore,
    plan: Plan,
    args: argparse.Namespace,
    model_store: Path,
    options: Options,
    workers: int,
    progress: Progress,
) -> tuple[dict[str, ModelRef], float | None]:
    """Embed the plan's pending partitions on Ray and commit them; return the models and the largest engine
    actor's peak RSS (MB; ``None`` when nothing ran).

    Raises:
        NotFound, ConfigError: no model for a modality of the inputs, other settings than the output's, stdin.
    """
    if plan.source.kind == "stdin":
        raise ConfigError("--engine ray reads the input on its workers, which cannot read stdin: write it to a file")
    models = _Models(store, plan, model_store, args.model, options)
    models.bind(set(store.recorded_models()))
    store.bind_settings(plan.settings(output_settings({}, options)))
    worker_rss: float | None = None
    for window in windows(plan.spans(skip=store.state.has), args.ray_window or DEFAULT_WINDOW):
        init_ray()
        check_resources(workers, args.num_cpus)
        pieces = _Pieces(window)
        for piece in _run_window(window, plan, models, args, workers):
            models.bind(set(piece.pop("modalities")))  # before anything of a new modality is committed
            worker_rss = max(worker_rss or 0.0, piece.pop("worker_peak_rss_mb"))
            progress.items(piece["count"])
            entry = pieces.add(piece)
            if entry is not None:
                store.record(entry)
                progress.partition()
        if pieces.spans:  # every row flows to a writer, so this is a bug, never an input's fault
            raise RuntimeError(f"Ray run ended with partitions {sorted(pieces.spans)} incomplete")
    return models.refs, worker_rss


def _run_window(
    window: list[Span], plan: Plan, models: _Models, args: argparse.Namespace, workers: int
) -> Iterator[dict[str, Any]]:
    """One Ray Data pipeline over ``window``; yields the piece entries its writers return."""
    import ray

    specs, options = models.specs(), models.options
    units = [json.dumps([s.to_dict() for s in run]) for run in plan.runs(window)]
    ds = ray.data.from_items([{"spans": u} for u in units], override_num_blocks=len(units))
    whole = {"batch_size": None, "batch_format": "pyarrow"}  # a block at a time: a partition stays together
    ds = ds.map_batches(read_spans, fn_kwargs={"plan": plan}, batch_size=1, batch_format="pyarrow")
    ds = ds.map_batches(preprocess, fn_kwargs={"specs": specs, "options": options}, **whole)
    ds = ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"specs": specs, "options": options, "batch_size": args.batch_size},
        **whole,
        concurrency=workers,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus or None,
    )
    ds = ds.map_batches(write_pieces, fn_kwargs={"root": _output_uri(models.store)}, **whole)
    for row in ds.iter_rows():
        yield json.loads(row["entry"])


def _output_uri(store: ShardStore) -> str:
    """The output as workers must name it: a local output by its absolute path."""
    return store.root.path if store.root.local else store.uri
