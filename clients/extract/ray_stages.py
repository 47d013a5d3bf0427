"""The stages of the Ray Data pipeline (``ray_job``), run on Ray workers; importable without Ray.

Rows travel as Arrow tables with these columns: ``partition``, ``partition_rows`` (the partition's size, so a
writer knows whether it holds all of it), ``id``, ``modality``, ``label``, ``source`` (the file or manifest
row), ``text``, ``error`` (set: the row failed, or was never an item), ``bad_row``; then ``decoded`` (the
preprocessor's output, pickled by our own code on our own workers) after ``preprocess``; then ``model``,
``dims``, ``embedding`` and ``tokens`` after :class:`EmbedActor`. ``write_pieces`` writes the files.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .backends import DECODE_ERRORS, LocalModel, Options, _reason
from .inputs import BadRow, Item
from .plan import Partition, Plan, Span
from .progress import peak_rss_mb
from .shards import Row, bad_row_record, error_record, rows_to_table, shard_name, write_partition

ModelSpecs = dict[str, tuple[dict[str, Any], str]]  # modality -> (model.json as a dict, model directory)

# One LocalModel per (model directory, options) per worker process: Ray tasks are stateless, and building a
# tokenizer per batch would cost more than the batch.
_MODELS: dict[tuple[str, Options], LocalModel] = {}


def _model(specs: ModelSpecs, modality: str, options: Options) -> LocalModel:
    manifest, model_dir = specs[modality]
    key = (model_dir, options)
    if key not in _MODELS:
        from d2v.core.manifest import ModelManifest

        _MODELS[key] = LocalModel(ModelManifest.from_dict(manifest), Path(model_dir), options, workers=1)
    return _MODELS[key]


def no_model(modality: str) -> str:
    return f"no {modality} model"


def read_spans(batch: pa.Table, plan: Plan) -> Iterator[pa.Table]:
    """Each row names a run of consecutive spans (JSON): read them from the source, one table per partition."""
    for encoded in batch.column("spans").to_pylist():
        spans = [Span.from_dict(d) for d in json.loads(encoded)]
        for part in plan.read_run(spans):
            yield _partition_table(part)


def _partition_table(part: Partition) -> pa.Table:
    items, bad = part.items, part.bad_rows
    n = len(items) + len(bad)
    return pa.table(
        {
            "partition": pa.array([part.index] * n, pa.int64()),
            "partition_rows": pa.array([n] * n, pa.int64()),
            "id": [it.id for it in items] + [b.id for b in bad],
            "modality": [it.modality for it in items] + [""] * len(bad),
            "label": pa.array([it.label for it in items] + [None] * len(bad), pa.string()),
            "source": pa.array([it.path for it in items] + [b.source for b in bad], pa.string()),
            "text": pa.array([it.text for it in items] + [None] * len(bad), pa.string()),
            "error": pa.array([None] * len(items) + [b.reason for b in bad], pa.string()),
            "bad_row": [False] * len(items) + [True] * len(bad),
        }
    )


def preprocess(batch: pa.Table, specs: ModelSpecs, options: Options) -> pa.Table:
    """Read and preprocess each item with its model's preprocessor (CPU tasks, through the input's filesystem)."""
    decoded, errors = [], []
    for row in batch.to_pylist():
        blob, error = None, row["error"]
        if error is None and row["modality"] not in specs:
            error = no_model(row["modality"])
        elif error is None:
            try:
                model = _model(specs, row["modality"], options)
                item = Item(row["id"], row["modality"], path=row["source"], text=row["text"], label=row["label"])
                blob = pickle.dumps(model.decode(item))
            except DECODE_ERRORS as exc:
                error = _reason(exc)
        decoded.append(blob)
        errors.append(error)
    out = batch.select([c for c in batch.column_names if c not in ("text", "error")])
    return out.append_column("error", pa.array(errors, pa.string())).append_column(
        "decoded", pa.array(decoded, pa.binary())
    )


class EmbedActor:
    """A Ray Data callable class: the runtime engine of each modality, loaded on first use, once per actor."""

    def __init__(self, specs: ModelSpecs, options: Options, batch_size: int) -> None:
        self.specs, self.options, self.batch_size = specs, options, batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: list[Row | None] = [None] * len(rows)
        by_modality: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if row["error"] is None:
                by_modality.setdefault(row["modality"], []).append(i)
            else:
                known = row["modality"] in self.specs
                name = _model(self.specs, row["modality"], self.options).ref.name if known else ""
                out[i] = Row(row["id"], row["modality"], name, row["label"], error=row["error"], source=row["source"])
        for modality, idx in by_modality.items():
            model = _model(self.specs, modality, self.options)
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                items = [Item(rows[i]["id"], modality, path=rows[i]["source"], label=rows[i]["label"]) for i in chunk]
                decoded = [pickle.loads(rows[i]["decoded"]) for i in chunk]
                for i, row in zip(chunk, model.embed_decoded(items, decoded), strict=True):
                    out[i] = row
        dims = {m: _model(self.specs, m, self.options).ref.dims for m in by_modality}
        return _rows_table(batch, out, dims)


def _rows_table(batch: pa.Table, rows: list[Row], dims: dict[str, int]) -> pa.Table:
    def listed(a: np.ndarray | None) -> list | None:
        return None if a is None else np.asarray(a, np.float32).tolist()

    return pa.table(
        {
            "partition": batch.column("partition"),
            "partition_rows": batch.column("partition_rows"),
            "bad_row": batch.column("bad_row"),
            "id": [r.id for r in rows],
            "modality": [r.modality for r in rows],
            "model": [r.model for r in rows],
            "dims": pa.array([dims.get(r.modality, 0) for r in rows], pa.int32()),
            "label": pa.array([r.label for r in rows], pa.string()),
            "source": pa.array([r.source for r in rows], pa.string()),
            "error": pa.array([r.error for r in rows], pa.string()),
            "embedding": pa.array([listed(r.vector) for r in rows], pa.list_(pa.float32())),
            "tokens": pa.array([listed(r.tokens) for r in rows], pa.list_(pa.list_(pa.float32()))),
            "rss_mb": [peak_rss_mb()] * len(rows),
        }
    )


def write_pieces(batch: pa.Table, root: str) -> pa.Table:
    """The rows of a batch -> per partition, its shards and error file (through the output's filesystem).

    A batch that holds all of a partition's rows (the usual case: a partition is read as one block) writes
    the partition's files under their usual names; a partition Ray split across batches is written as pieces
    (``part-K-<hash of its ids>``) that the driver commits together once their counts add up. Returns one row
    per partition: its piece entry (JSON) for the driver.
    """
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for r in batch.to_pylist():
        by_partition.setdefault(r["partition"], []).append(r)
    entries = []
    for index, rows in sorted(by_partition.items()):
        rows.sort(key=lambda r: r["id"])
        whole = len(rows) == rows[0]["partition_rows"]
        name = shard_name(index) if whole else f"{shard_name(index)}-{_ids_hash(rows)}"
        entry = write_partition(root, index, *_tables(rows), name=name)
        entry["count"] = len(rows)
        entry["modalities"] = sorted({r["modality"] for r in rows if r["modality"]})
        entry["worker_peak_rss_mb"] = max(r["rss_mb"] for r in rows)
        entries.append(json.dumps(entry))
    return pa.table({"entry": entries})


def _tables(rows: list[dict[str, Any]]) -> tuple[dict[str, pa.Table], list[dict[str, Any]]]:
    by_model: dict[str, list[Row]] = {}
    dims: dict[str, int] = {}
    errors = []
    for r in rows:
        row = Row(r["id"], r["modality"], r["model"], r["label"], error=r["error"], source=r["source"])
        if r["bad_row"]:
            errors.append(bad_row_record(BadRow(r["id"], r["error"], r["source"])))
        elif r["error"] is not None:
            errors.append(error_record(row))
        else:
            dims[r["model"]] = d = r["dims"]
            row.vector = np.asarray(r["embedding"], np.float32)
            row.tokens = None if r["tokens"] is None else np.asarray(r["tokens"], np.float32).reshape(-1, d)
            by_model.setdefault(r["model"], []).append(row)
    return {model: rows_to_table(rs, dims[model]) for model, rs in by_model.items()}, errors


def _ids_hash(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha1("\n".join(r["id"] for r in rows).encode()).hexdigest()[:12]
