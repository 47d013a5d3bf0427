"""Atomic, resumable output: Parquet shards plus per-shard error files and a ledger.

Layout of ``OUT_DIR``::

    embeddings/<model>/part-000000.parquet   # id, modality, model, label, dims, embedding (fixed_size_list<f32>)
    errors/part-000000.jsonl                 # the failed items of that shard: {"id", "reason", ...}
    errors/inputs.jsonl                      # unusable manifest rows (rewritten on every run)
    ledger.jsonl                             # one line per committed shard (seq, rows, errors, time)
    settings.json                            # what the vectors were made with (models + sha256, options)

A shard is committed by writing its error file and then its Parquet file under temporary names and
renaming them into place (rename is atomic), the Parquet rename last: it is the commit point. On start,
temporary files and error files without their Parquet are deleted, and the ids in committed shards are
"done". So a run killed at any instant and re-run ends with every input id exactly once. A re-run must
make the same vectors: ``bind_settings`` refuses to resume an output made with another model, pooling,
normalisation, dimensions or token setting (``--overwrite`` starts the output anew instead).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2v.core.errors import ConfigError

_PART = re.compile(r"part-(\d{6})\.(parquet|jsonl)$")


@dataclass
class Row:
    """One embedded item (``vector`` set) or one failure (``error`` set)."""

    id: str
    modality: str
    model: str
    label: str | None = None
    vector: np.ndarray | None = None
    tokens: np.ndarray | None = None
    error: str | None = None
    source: str | None = None


@dataclass
class ResumeState:
    done: set[str] = field(default_factory=set)
    ok: int = 0
    errors: int = 0
    next_seq: int = 0


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class ShardStore:
    """The output directory of one extraction (one writer: the driver process)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir)
        self.emb_dir = self.root / "embeddings"
        self.err_dir = self.root / "errors"
        self.ledger = self.root / "ledger.jsonl"
        self.staging = self.root / "_staging"
        for d in (self.emb_dir, self.err_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.state = self._recover()

    # ------------------------------------------------------------------------------------------- resume
    def shard_files(self) -> list[Path]:
        return sorted(self.emb_dir.glob("*/part-*.parquet"))

    def _recover(self) -> ResumeState:
        for tmp in list(self.root.rglob("*.tmp")):
            tmp.unlink()
        shutil.rmtree(self.staging, ignore_errors=True)  # a killed Ray run's uncommitted output
        state = ResumeState()
        seqs: set[int] = set()
        for path in self.shard_files():
            seqs.add(int(_PART.search(path.name).group(1)))
            ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
            state.done.update(ids)
            state.ok += len(ids)
        for path in sorted(self.err_dir.glob("part-*.jsonl")):
            seq = int(_PART.search(path.name).group(1))
            if seq not in seqs:  # killed between the error file and its shard: not committed
                path.unlink()
                continue
            for rec in _read_jsonl(path):
                state.done.add(rec["id"])
                state.errors += 1
        state.next_seq = max(seqs, default=-1) + 1
        return state

    # ----------------------------------------------------------------------------------------- settings
    def bind_settings(self, settings: dict[str, Any]) -> None:
        """Record what this output's vectors are made with, or check a resumed output was made the same way.

        ``settings["models"]`` maps modality -> model identity; a modality new to this output is added.

        Raises:
            ConfigError: the output holds vectors made with other settings (the message lists them).
        """
        path = self.root / "settings.json"
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if recorded is None and (self.state.ok or self.state.errors):
            raise ConfigError(
                f"{self.root} holds committed shards but no settings.json (made by an older d2v): "
                "resume cannot tell whether they match; use another OUT_DIR or --overwrite"
            )
        merged = dict(settings, models={**(recorded or {}).get("models", {}), **settings["models"]})
        if recorded is not None:
            changed = _differences(recorded, merged)
            if changed:
                raise ConfigError(
                    f"{self.root} was started with other settings ({'; '.join(changed)}); resuming would mix "
                    "vectors. Use another OUT_DIR, or --overwrite to start this one anew"
                )
        _fsync_write(path.with_suffix(".json.tmp"), (json.dumps(merged, indent=2, sort_keys=True) + "\n").encode())
        os.replace(path.with_suffix(".json.tmp"), path)

    # ------------------------------------------------------------------------------------------- commit
    def commit(self, model: str, dims: int, rows: list[Row]) -> int:
        """Write one shard (its good rows and its failures) atomically; return its sequence number."""
        good = [r for r in rows if r.error is None]
        errors = [error_record(r) for r in rows if r.error is not None]
        return self.commit_table(model, rows_to_table(good, dims), errors)

    def commit_table(self, model: str, table: pa.Table, errors: list[dict[str, Any]]) -> int:
        """Commit a ready shard table plus the error records of the same inputs; return the sequence number."""
        seq = self.state.next_seq
        self.state.next_seq += 1
        name = f"part-{seq:06d}"
        if errors:
            err_path = self.err_dir / f"{name}.jsonl"
            _fsync_write(err_path.with_suffix(".jsonl.tmp"), _jsonl(errors))
            os.replace(err_path.with_suffix(".jsonl.tmp"), err_path)
        shard = self.emb_dir / _safe(model) / f"{name}.parquet"
        shard.parent.mkdir(parents=True, exist_ok=True)
        tmp = shard.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, shard)  # the commit point
        self.state.done.update(table.column("id").to_pylist())
        self.state.done.update(e["id"] for e in errors)
        self.state.ok += table.num_rows
        self.state.errors += len(errors)
        with self.ledger.open("a", encoding="utf-8") as f:
            entry = {"seq": seq, "model": model, "rows": table.num_rows, "errors": len(errors), "time": time.time()}
            f.write(json.dumps(entry) + "\n")
        return seq

    def write_input_errors(self, records: Iterable[dict[str, Any]]) -> int:
        """Replace ``errors/inputs.jsonl`` (bad manifest rows: recomputed identically on every run)."""
        records = list(records)
        path = self.err_dir / "inputs.jsonl"
        _fsync_write(path.with_suffix(".jsonl.tmp"), _jsonl(records))
        os.replace(path.with_suffix(".jsonl.tmp"), path)
        return len(records)

    def merged_errors(self) -> Path:
        """Concatenate every error file into ``OUT_DIR/errors.jsonl`` (written atomically)."""
        records = list(_read_jsonl(self.err_dir / "inputs.jsonl"))
        for path in sorted(self.err_dir.glob("part-*.jsonl")):
            records.extend(_read_jsonl(path))
        out = self.root / "errors.jsonl"
        _fsync_write(out.with_suffix(".jsonl.tmp"), _jsonl(records))
        os.replace(out.with_suffix(".jsonl.tmp"), out)
        return out


def _differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    out = [
        f"{key}: {recorded.get(key)!r} -> {value!r}"
        for key, value in sorted(wanted.items())
        if key != "models" and recorded.get(key) != value
    ]
    for modality, model in sorted(recorded.get("models", {}).items()):
        if wanted["models"].get(modality) != model:
            out.append(f"{modality} model: {model} -> {wanted['models'].get(modality)}")
    return out


def clear_output(root: Path) -> None:
    """``--overwrite``: remove what an earlier extraction wrote to ``root``, and nothing else."""
    models = [d.name for d in (root / "embeddings").glob("*") if d.is_dir()]
    for name in ("embeddings", "errors", "_staging"):
        shutil.rmtree(root / name, ignore_errors=True)
    files = ["ledger.jsonl", "settings.json", "errors.jsonl", "manifest.json", "pca.png"]
    files += [f"{m}{suffix}" for m in models for suffix in (".npy", ".ids.txt")]
    for name in files:
        (root / name).unlink(missing_ok=True)


def rows_to_table(rows: list[Row], dims: int) -> pa.Table:
    """The shard schema; ``embedding`` is ``fixed_size_list<float32>[dims]``, ``tokens`` only when present."""
    flat = np.concatenate([r.vector.astype(np.float32).ravel() for r in rows]) if rows else np.zeros(0, np.float32)
    columns = {
        "id": pa.array([r.id for r in rows], pa.string()),
        "modality": pa.array([r.modality for r in rows], pa.string()),
        "model": pa.array([r.model for r in rows], pa.string()),
        "label": pa.array([r.label for r in rows], pa.string()),
        "dims": pa.array([dims] * len(rows), pa.int32()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dims),
    }
    if any(r.tokens is not None for r in rows):
        token_type = pa.list_(pa.list_(pa.float32(), dims))
        columns["tokens"] = pa.array([None if r.tokens is None else r.tokens.tolist() for r in rows], token_type)
    return pa.table(columns)


def error_record(row: Row) -> dict[str, Any]:
    rec = {"id": row.id, "modality": row.modality, "model": row.model, "reason": row.error}
    if row.source:
        rec["source"] = row.source
    return rec


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"


def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")


def _read_jsonl(path: Path) -> Iterable[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
