"""The stages of the Ray Data pipeline (``ray_job``), run on Ray workers; importable without Ray.

Rows travel as Arrow tables with these columns: ``partition``, ``id``, ``modality``, ``label``, ``source``
(the file), ``error`` (set: the row failed, or was never an item), ``bad_row``; then ``decoded`` (the
preprocessor's output, pickled by our own code on our own workers) after ``preprocess``; then ``model``,
``embedding`` and ``tokens`` after :class:`EmbedActor`. ``write_group`` writes one partition's files.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .backends import DECODE_ERRORS, LocalModel, Options, _reason
from .inputs import Item
from .progress import peak_rss_mb
from .shards import Row, error_record, rows_to_table, write_partition

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


def items_from_files(batch: pa.Table, index: dict[str, list[Any]]) -> pa.Table:
    """``read_binary_files`` rows (``bytes``, ``path``) -> item rows; ``index``: path -> [partition, id,
    modality, label] for the files of this window (the plan's, so ids and partitions match the local engine)."""
    paths = batch.column("path").to_pylist()
    meta = [index[p] for p in paths]
    return pa.table(
        {
            "partition": pa.array([m[0] for m in meta], pa.int64()),
            "id": [m[1] for m in meta],
            "modality": [m[2] for m in meta],
            "label": pa.array([m[3] for m in meta], pa.string()),
            "source": [m[4] for m in meta],
            "raw": batch.column("bytes"),
            "text": pa.array([None] * len(paths), pa.string()),
            "error": pa.array([None] * len(paths), pa.string()),
            "bad_row": [False] * len(paths),
        }
    )


def preprocess(batch: pa.Table, specs: ModelSpecs, options: Options) -> pa.Table:
    """Read (when not read yet) and preprocess each item with its model's preprocessor (CPU tasks)."""
    rows = batch.to_pylist()
    decoded, errors = [], []
    for row in rows:
        blob, error = None, row["error"]
        if error is None:
            try:
                model = _model(specs, row["modality"], options)
                item = Item(row["id"], row["modality"], path=row["source"], text=row["text"], label=row["label"])
                raw = row["raw"]
                if raw is None:
                    blob = pickle.dumps(model.decode(item))
                else:
                    raw = raw.decode("utf-8") if row["modality"] == "text" else raw
                    blob = pickle.dumps(model.preprocessor.load_item(raw))
            except DECODE_ERRORS as exc:
                error = _reason(exc)
        decoded.append(blob)
        errors.append(error)
    keep = [c for c in batch.column_names if c not in ("raw", "text", "error")]
    out = batch.select(keep)
    return out.append_column("error", pa.array(errors, pa.string())).append_column(
        "decoded", pa.array(decoded, pa.binary())
    )


class EmbedActor:
    """A Ray Data callable class: the runtime engine of every modality, loaded once per actor."""

    def __init__(self, specs: ModelSpecs, options: Options) -> None:
        self.specs, self.options = specs, options
        self.models = {m: _model(specs, m, options) for m in specs}

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: list[Row | None] = [None] * len(rows)
        by_modality: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if row["error"] is None:
                by_modality.setdefault(row["modality"], []).append(i)
            else:
                name = self.models[row["modality"]].ref.name if row["modality"] in self.models else ""
                out[i] = Row(row["id"], row["modality"], name, row["label"], error=row["error"], source=row["source"])
        for modality, idx in by_modality.items():
            model = self.models[modality]
            items = [Item(rows[i]["id"], modality, path=rows[i]["source"], label=rows[i]["label"]) for i in idx]
            decoded = [pickle.loads(rows[i]["decoded"]) for i in idx]
            for i, row in zip(idx, model.embed_decoded(items, decoded), strict=True):
                out[i] = row
        return _rows_table(batch, out)


def _rows_table(batch: pa.Table, rows: list[Row]) -> pa.Table:
    def listed(a: np.ndarray | None) -> list | None:
        return None if a is None else np.asarray(a, np.float32).tolist()

    return pa.table(
        {
            "partition": batch.column("partition"),
            "bad_row": batch.column("bad_row"),
            "id": [r.id for r in rows],
            "modality": [r.modality for r in rows],
            "model": [r.model for r in rows],
            "label": pa.array([r.label for r in rows], pa.string()),
            "source": pa.array([r.source for r in rows], pa.string()),
            "error": pa.array([r.error for r in rows], pa.string()),
            "embedding": pa.array([listed(r.vector) for r in rows], pa.list_(pa.float32())),
            "tokens": pa.array([listed(r.tokens) for r in rows], pa.list_(pa.list_(pa.float32()))),
            "rss_mb": [peak_rss_mb()] * len(rows),
        }
    )


def write_group(group: pa.Table, root: str, dims: dict[str, int]) -> pa.Table:
    """One partition's rows -> its shards and error file (through the output's filesystem); returns one row:
    the ledger entry (JSON) for the driver to record."""
    rows = group.to_pylist()
    index = rows[0]["partition"]
    by_model: dict[str, list[Row]] = {}
    errors = []
    for r in sorted(rows, key=lambda r: r["id"]):
        if r["bad_row"]:
            errors.append({"id": r["id"], "reason": r["error"], "source": r["source"], "bad_row": True})
            continue
        row = Row(r["id"], r["modality"], r["model"], r["label"], error=r["error"], source=r["source"])
        if r["error"] is not None:
            errors.append(error_record(row))
            continue
        row.vector = np.asarray(r["embedding"], np.float32)
        row.tokens = None if r["tokens"] is None else np.asarray(r["tokens"], np.float32).reshape(-1, dims[r["model"]])
        by_model.setdefault(r["model"], []).append(row)
    tables = {model: rows_to_table(rs, dims[model]) for model, rs in by_model.items()}
    entry = write_partition(root, index, tables, errors)
    entry["worker_peak_rss_mb"] = max(r["rss_mb"] for r in rows)
    return pa.table({"entry": [json.dumps(entry)]})
