"""``--engine ray``: Ray Data over the partition plan, in windows of ``--ray-window`` pending partitions.

Each window is one pipeline::

    read_binary_files(the window's files, filesystem)      # a directory (images, audio, text files)
      | from_items(the window's manifest rows)              # a manifest (rows are ids + texts or paths)
    -> map_batches(preprocess)                              # CPU tasks: read + the model's preprocessor
    -> map_batches(EmbedActor, concurrency=--workers,       # an actor pool holding the runtime engines
                   num_cpus=--num-cpus, num_gpus=--num-gpus)
    -> groupby(partition).map_groups(write_group)           # per-partition Parquet + error file, written by
                                                            #   workers through the output's filesystem
and the driver records one ledger line per partition as the entries come back. The driver holds the window's
plan (at most ``--ray-window`` partitions of rows) and the entries: no vectors, whatever the corpus size.

Runs on a laptop (``ray.init()`` starts a local cluster bound to 127.0.0.1) and on a cluster (``RAY_ADDRESS``;
inputs and ``OUT`` must then be reachable from every node: shared storage or an object store URI). A run
killed mid-window leaves that window's partitions without ledger lines: they run again on the next start,
rewriting the same files; committed partitions are never recomputed. The actor pool lives as long as its
window's pipeline, so a window should hold thousands of items (the default: 8 partitions per actor).
Ray is an optional extra and is imported only here.
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
from .fs import locate
from .plan import Partition, Plan
from .progress import Progress
from .ray_stages import EmbedActor, ModelSpecs, items_from_files, preprocess, write_group
from .shards import ShardStore


def init_ray(num_cpus: int | None = None) -> None:
    """Join ``RAY_ADDRESS`` when set, else start a local Ray bound to loopback (no dashboard)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False, log_to_driver=False)
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


def windows(partitions: Iterator[Partition], size: int) -> Iterator[list[Partition]]:
    while window := list(islice(partitions, size)):
        yield window


class _Models:
    """The store's models, resolved once; ``bind`` checks each new modality against ``settings.json``."""

    def __init__(self, store: ShardStore, plan: Plan, model_store: Path, names: list[str], options: Options):
        self.store, self.plan, self.model_store, self.options = store, plan, model_store, options
        self.found = resolve_models(model_store, names)
        self.refs: dict[str, ModelRef] = {}

    def bind(self, modalities: set[str]) -> None:
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
        return {m: (self.found[m][0].to_dict(), str(self.found[m][1])) for m in self.refs}


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
        NotFound, ConfigError: no model for a modality of the inputs, other settings than the output's.
    """
    models = _Models(store, plan, model_store, args.model, options)
    models.bind(set(store.recorded_models()))
    store.bind_settings(plan.settings(output_settings({}, options)))
    worker_rss: float | None = None
    size = args.ray_window or 8 * workers
    for window in windows(plan.partitions(skip=store.state.has), size):
        models.bind({it.modality for part in window for it in part.items})
        meta = {p.index: {"items": p.size, "first": p.first, "last": p.last} for p in window}
        init_ray()
        check_resources(workers, args.num_cpus)
        for entry in _run_window(window, plan, models, args, workers):
            worker_rss = max(worker_rss or 0.0, entry.pop("worker_peak_rss_mb"))
            store.record({**entry, **meta[entry["partition"]]})
            progress.items(meta[entry["partition"]]["items"])
            progress.partition()
    return models.refs, worker_rss


def _run_window(
    window: list[Partition], plan: Plan, models: _Models, args: argparse.Namespace, workers: int
) -> Iterator[dict[str, Any]]:
    """One Ray Data pipeline over ``window``; yields the ledger entries its writers return."""
    specs, options = models.specs(), models.options
    ds = _source(window, plan)
    ds = ds.map_batches(
        preprocess, fn_kwargs={"specs": specs, "options": options}, batch_size=args.batch_size, batch_format="pyarrow"
    )
    ds = ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"specs": specs, "options": options},
        batch_size=args.batch_size,
        batch_format="pyarrow",
        concurrency=workers,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus or None,
    )
    dims = {ref.name: ref.dims for ref in models.refs.values()}
    ds = ds.groupby("partition", num_partitions=max(1, min(len(window), 2 * workers))).map_groups(
        write_group, fn_kwargs={"root": _output_uri(models.store), "dims": dims}, batch_format="pyarrow"
    )
    for row in ds.iter_rows():
        yield json.loads(row["entry"])


def _output_uri(store: ShardStore) -> str:
    """The output as workers must name it: a local output by its absolute path."""
    return store.root.path if store.root.local else store.uri


def _source(window: list[Partition], plan: Plan) -> Any:
    """The window's rows as a dataset: a directory's files read by ``read_binary_files`` on the workers;
    a manifest's rows (ids + texts or paths, and its unusable rows) as items."""
    import ray

    if plan.source.kind == "directory":
        loc = plan.source.location
        index = {}
        for part in window:
            for it in part.items:
                path = locate(it.path).path
                index[path] = [part.index, it.id, it.modality, it.label, it.path]
        ds = ray.data.read_binary_files(list(index), include_paths=True, filesystem=loc.fs)
        return ds.map_batches(items_from_files, fn_kwargs={"index": index}, batch_format="pyarrow")
    rows = []
    for part in window:
        for it in part.items:
            rows.append(_row(part.index, it.id, it.modality, it.label, it.path, it.text, None))
        for bad in part.bad_rows:
            rows.append(_row(part.index, bad.id, "", None, bad.source, None, bad.reason, bad_row=True))
    return ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // 256 + 1, 64)))


def _row(partition: int, id_: str, modality: str, label: Any, source: Any, text: Any, error: Any, bad_row=False):
    return {
        "partition": partition,
        "id": id_,
        "modality": modality,
        "label": label,
        "source": source,
        "raw": None,
        "text": text,
        "error": error,
        "bad_row": bad_row,
    }
