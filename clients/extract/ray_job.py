"""``--engine ray``: Ray Data ``from_items -> map_batches`` (an actor pool, each actor holding an ONNX
Runtime session) ``-> write_parquet``, one pipeline per chunk of ``--ray-chunk-shards`` shards' worth of
pending inputs; each chunk's files are committed as shards (through ``ShardStore``) before the next chunk runs.

Runs on a laptop (``ray.init()`` starts a local cluster) and on a cluster (``RAY_ADDRESS``; the output
directory must then be on storage every node can write). A run killed mid-chunk leaves that chunk's staging
folder, which the next run deletes: only the unfinished chunk is redone, never a committed shard. Ray is an
optional extra and is imported only here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from d2v.core.errors import NotFound

from .backends import LocalModel, ModelRef, Options, output_settings, resolve_models
from .inputs import Item
from .shards import ShardStore, rows_to_table

_EXTRA_COLUMNS = ("error", "source")


class EmbedActor:
    """A Ray Data callable class: one ONNX Runtime session per actor, kept across batches."""

    def __init__(self, manifest: dict[str, Any], model_dir: str, options: Options) -> None:
        from d2v.core.manifest import ModelManifest

        self.model = LocalModel(ModelManifest.from_dict(manifest), Path(model_dir), options, workers=1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [Item(**row) for row in batch.to_pylist()]
        rows = self.model.embed(items)
        good = [r for r in rows if r.error is None]
        table = rows_to_table(good, self.model.ref.dims)
        bad = [r for r in rows if r.error is not None]
        # One table per batch: good rows first, then the failures with a zero vector and their reason.
        errors = pa.array([None] * len(good) + [r.error for r in bad], pa.string())
        sources = pa.array([r.source for r in good] + [r.source for r in bad], pa.string())
        if bad:
            table = pa.concat_tables([table, _error_rows(bad, self.model.ref, table.schema)])
        return table.append_column("error", errors).append_column("source", sources)


def _error_rows(bad: list[Any], ref: ModelRef, schema: pa.Schema) -> pa.Table:
    import numpy as np

    for r in bad:
        r.vector = np.zeros(ref.dims, dtype=np.float32)
        r.tokens = np.zeros((0, ref.dims), dtype=np.float32) if "tokens" in schema.names else None
    return rows_to_table(bad, ref.dims).cast(schema)


def init_ray(num_cpus: int | None = None) -> None:
    """Join ``RAY_ADDRESS`` when set, else start a local Ray bound to loopback (no dashboard)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)


def run_ray(
    store: ShardStore,
    modalities: list[str],
    pending: list[Item],
    args: argparse.Namespace,
    model_store: Path,
    options: Options,
    workers: int,
) -> dict[str, ModelRef]:
    """Embed ``pending`` on Ray and commit the results; return the model used per modality.

    Raises:
        NotFound, ConfigError: no model for a modality of the inputs.
    """
    import ray

    found = resolve_models(model_store, args.model)
    refs: dict[str, ModelRef] = {}
    for modality in modalities:
        if modality not in found:
            raise NotFound(f"no {modality} model in {model_store}: pass --model NAME_OR_DIR")
        manifest, model_dir = found[modality]
        refs[modality] = LocalModel(manifest, model_dir, options, workers=1).ref
    store.bind_settings(output_settings(refs, options))
    if not pending:
        return refs
    init_ray()
    chunk_size = max(1, args.ray_chunk_shards) * args.shard_size
    by_modality: dict[str, list[Item]] = defaultdict(list)
    for item in pending:
        by_modality[item.modality].append(item)
    for modality in sorted(by_modality):
        manifest, model_dir = found[modality]
        group = by_modality[modality]
        for start in range(0, len(group), chunk_size):
            rows = [_item_dict(it) for it in group[start : start + chunk_size]]
            staging = store.staging / f"{modality}-{uuid.uuid4().hex[:8]}"
            ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * workers)))
            ds = ds.map_batches(
                EmbedActor,
                fn_constructor_kwargs={"manifest": manifest.to_dict(), "model_dir": str(model_dir), "options": options},
                batch_size=args.batch_size,
                batch_format="pyarrow",
                concurrency=workers,
                num_cpus=1,
            )
            ds.write_parquet(str(staging))
            _commit_chunk(store, refs[modality], staging, args.shard_size)
            print(
                f"d2v extract (ray): {modality} {start + len(rows)}/{len(group)} committed",
                file=sys.stderr,
                flush=True,
            )
    shutil.rmtree(store.staging, ignore_errors=True)
    return refs


def _commit_chunk(store: ShardStore, ref: ModelRef, staging: Path, shard_size: int) -> None:
    """Commit one chunk's staged files as ``shard_size``-row shards, then delete the staging folder.

    Killed half-way, the shards already committed stay done and the rest of the chunk is redone next run.
    """
    files = sorted(staging.glob("*.parquet"))
    tables = [pq.read_table(path) for path in files]
    tables = [t for t in tables if t.num_rows]
    if tables:
        table = pa.concat_tables(tables, promote_options="default")  # a batch may lack ``tokens``
        for begin in range(0, table.num_rows, shard_size):
            _commit_part(store, ref, table.slice(begin, shard_size))
    shutil.rmtree(staging, ignore_errors=True)


def _commit_part(store: ShardStore, ref: ModelRef, part: pa.Table) -> None:
    failed = pc.invert(pc.is_null(part.column("error")))
    good = part.filter(pc.invert(failed)).drop_columns(list(_EXTRA_COLUMNS))
    bad = part.filter(failed).to_pylist()
    errors = [
        {
            "id": r["id"],
            "modality": r["modality"],
            "model": ref.name,
            "reason": r["error"],
            **({"source": r["source"]} if r["source"] else {}),
        }
        for r in bad
    ]
    store.commit_table(ref.name, good, errors)


def _item_dict(item: Item) -> dict[str, Any]:
    return {"id": item.id, "modality": item.modality, "path": item.path, "text": item.text, "label": item.label}
