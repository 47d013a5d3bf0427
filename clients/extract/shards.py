"""Atomic, resumable output: one Parquet shard per (partition, model), per-partition error files, a ledger.

Layout of ``OUT`` (a path or a URI, see ``fs``)::

    embeddings/<model>/part-000007.parquet   # partition 7's rows of that model: id, modality, model, label,
                                             #   dims, embedding (fixed_size_list<f32>), [tokens]
    errors/part-000007.jsonl                 # partition 7's failed items and unusable rows {"id", "reason", ...}
    embeddings/<model>/part-000007-<h>.parquet   # a piece of partition 7 (Ray split it; ``merge_pieces``)
    ledger.jsonl                             # one line per committed partition (object stores: ledger/*.json)
    settings.json                            # what the vectors are made with (models + sha256, options, plan)

A partition's files have fixed names and are written first (locally: temporary file, fsync, rename); its
ledger line is written after them and is the commit point. Resume reads only the ledger: which partitions
are committed (a bitmap) and their counts, never the ids. Files no ledger line names are leftovers of a
killed run: removed on start where listing is cheap (local disks), ignored elsewhere, and in both cases
rewritten with the same content when their partition runs again. So a run killed at any instant and re-run
ends with every input id exactly once. A re-run must make the same vectors: ``bind_settings`` refuses to
resume an output made with another model, pooling, normalisation, dimensions, token setting or partition
plan (``--overwrite`` starts the output anew instead).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from d2v.core.errors import ConfigError

from .fs import Location, list_dir, locate, write_atomic

_PART = re.compile(r"part-(\d+)(-[0-9a-f]+)?\.(parquet|jsonl|json)$")  # a partition's file, or a piece's
LEDGER_FILE = "ledger.jsonl"  # local output: one appended line per partition
LEDGER_DIR = "ledger"  # object-store output (no append): one object per partition


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
    """What the ledger says: committed partitions (a bitmap) and the totals over them."""

    committed: bytearray = field(default_factory=bytearray)
    partitions: int = 0
    ok: int = 0
    errors: int = 0  # items that failed (decode, engine)
    bad_rows: int = 0  # rows that were never items

    def has(self, index: int) -> bool:
        return index < len(self.committed) and bool(self.committed[index])

    def add(self, entry: dict[str, Any]) -> None:
        index = entry["partition"]
        if self.has(index):
            return
        if index >= len(self.committed):
            self.committed.extend(bytes(max(index + 1 - len(self.committed), len(self.committed))))
        self.committed[index] = 1
        self.partitions += 1
        self.ok += sum(entry["rows"].values())
        self.errors += entry["errors"]
        self.bad_rows += entry["bad_rows"]

    @property
    def items(self) -> int:
        return self.ok + self.errors + self.bad_rows


def shard_name(index: int) -> str:
    return f"part-{index:06d}"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"


def write_partition(
    root_uri: str,
    index: int,
    tables: dict[str, pa.Table],
    errors: list[dict[str, Any]],
    name: str | None = None,
) -> dict[str, Any]:
    """Write partition ``index``'s shards (model -> table) and error file under ``name`` (default
    ``part-<index>``; a piece of a partition has its own); return its ledger entry.

    Runs wherever the partition was embedded (the driver, or a Ray worker): nothing is committed until the
    entry is recorded (``ShardStore.record``).
    """
    root = locate(root_uri)
    name = name or shard_name(index)
    entry: dict[str, Any] = {"partition": index, "rows": {}, "shards": [], "error_files": []}
    if errors:
        rel = f"errors/{name}.jsonl"
        write_atomic(root.child(rel), _jsonl(errors))
        entry["error_files"].append(rel)
    for model, table in sorted(tables.items()):
        if table.num_rows == 0:
            continue
        rel = f"embeddings/{safe_name(model)}/{name}.parquet"
        write_atomic(root.child(rel), lambda out, t=table: pq.write_table(t, out))
        entry["rows"][model] = table.num_rows
        entry["shards"].append(rel)
    entry["errors"] = sum(1 for e in errors if not e.get("bad_row"))
    entry["bad_rows"] = len(errors) - entry["errors"]
    return entry


def merge_pieces(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """One ledger entry for the pieces a partition was written in (``write_partition`` entries)."""
    entry: dict[str, Any] = {"partition": pieces[0]["partition"], "rows": {}, "shards": [], "error_files": []}
    for piece in pieces:
        for model, n in piece["rows"].items():
            entry["rows"][model] = entry["rows"].get(model, 0) + n
        entry["shards"] += piece["shards"]
        entry["error_files"] += piece["error_files"]
    entry["errors"] = sum(p["errors"] for p in pieces)
    entry["bad_rows"] = sum(p["bad_rows"] for p in pieces)
    return entry


def error_files(entry: dict[str, Any]) -> list[str]:
    """A ledger entry's error files (entries of earlier versions name one, as ``error_file``)."""
    return entry.get("error_files") or ([entry["error_file"]] if entry.get("error_file") else [])


class ShardStore:
    """The output of one extraction; the driver is its only ledger writer."""

    def __init__(self, out: str | Path) -> None:
        self.root = locate(str(out))
        self.uri = str(out)
        self.root.makedirs()
        self._ledger = self.root.child(LEDGER_FILE)
        self.state = self._recover()

    # ------------------------------------------------------------------------------------------- resume
    def _recover(self) -> ResumeState:
        state = ResumeState()
        for entry in self.ledger_entries():
            if "partition" not in entry:
                raise ConfigError(
                    f"{self.uri} was written by an older d2v extract (shards, not partitions); "
                    "use another OUT_DIR or --overwrite"
                )
            state.add(entry)
        if self.root.local:
            _remove_uncommitted(Path(self.root.path), state)
        return state

    def ledger_entries(self) -> Iterator[dict[str, Any]]:
        """The committed partitions' entries, in commit order (read one line at a time)."""
        if self.root.local:
            yield from _read_local_ledger(Path(self._ledger.path))
            return
        for info in list_dir(self.root.child(LEDGER_DIR)):
            yield json.loads(Location(self.root.fs, info.path, self.uri).read_bytes())

    def record(self, entry: dict[str, Any]) -> None:
        """Commit one partition: its ledger line, written after its files."""
        entry = {**entry, "time": round(time.time(), 3)}
        line = json.dumps(entry, sort_keys=True) + "\n"
        if self.root.local:
            with open(self._ledger.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        else:
            write_atomic(self.root.child(LEDGER_DIR, f"{shard_name(entry['partition'])}.json"), line.encode())
        self.state.add(entry)

    def shard_files(self, model: str | None = None) -> Iterator[Location]:
        """The committed shards (optionally of one model), in commit order; files the ledger does not name
        are never returned."""
        prefix = f"embeddings/{safe_name(model)}/" if model else "embeddings/"
        for entry in self.ledger_entries():
            for rel in entry["shards"]:
                if rel.startswith(prefix):
                    yield self.root.child(rel)

    def models(self) -> list[str]:
        """The model folders the ledger names (sorted)."""
        return sorted({m for entry in self.ledger_entries() for m in entry["rows"]})

    @property
    def ledger_name(self) -> str:
        return LEDGER_FILE if self.root.local else f"{LEDGER_DIR}/"

    # ----------------------------------------------------------------------------------------- settings
    def recorded_settings(self) -> dict[str, Any] | None:
        loc = self.root.child("settings.json")
        return json.loads(loc.read_bytes()) if loc.exists() else None

    def recorded_models(self) -> list[str]:
        """The modalities ``settings.json`` names a model for (``[]`` for a new output)."""
        return sorted((self.recorded_settings() or {}).get("models", {}))

    def bind_settings(self, settings: dict[str, Any]) -> None:
        """Record what this output's vectors are made with, or check a resumed output was made the same way.

        ``settings["models"]`` maps modality -> model identity; a modality new to this output is added.

        Raises:
            ConfigError: the output holds vectors made with other settings (the message lists them).
        """
        loc = self.root.child("settings.json")
        recorded = self.recorded_settings()
        if recorded is None and self.state.partitions:
            raise ConfigError(
                f"{self.uri} holds committed shards but no settings.json (made by an older d2v): "
                "resume cannot tell whether they match; use another OUT_DIR or --overwrite"
            )
        merged = dict(settings, models={**(recorded or {}).get("models", {}), **settings["models"]})
        if recorded is not None:
            changed = _differences(recorded, merged)
            if changed:
                raise ConfigError(
                    f"{self.uri} was started with other settings ({'; '.join(changed)}); resuming would mix "
                    "vectors. Use another OUT_DIR, or --overwrite to start this one anew"
                )
        write_atomic(loc, (json.dumps(merged, indent=2, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------------------------------------- report
    def merged_errors(self) -> Location:
        """Every committed partition's error file concatenated into ``OUT/errors.jsonl`` (streamed)."""
        out = self.root.child("errors.jsonl")

        def copy(stream: Any) -> None:
            for entry in self.ledger_entries():
                for rel in error_files(entry):
                    stream.write(self.root.child(rel).read_bytes())

        write_atomic(out, copy)
        return out


def _read_local_ledger(path: Path) -> Iterator[dict[str, Any]]:
    """Complete lines only: a line torn by a kill is cut off the file, so the next append starts clean."""
    if not path.is_file():
        return
    good = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                entry = json.loads(raw) if raw.endswith(b"\n") else None
            except json.JSONDecodeError:
                entry = None
            if entry is None:
                break
            good += len(raw)
            yield entry
    if good != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good)


def _remove_uncommitted(root: Path, state: ResumeState) -> None:
    """Local output: drop temporary files and partition files the ledger does not name (a killed run's)."""
    shutil.rmtree(root / "_staging", ignore_errors=True)  # the layout of older versions
    for tmp in root.glob("*.tmp"):
        tmp.unlink(missing_ok=True)
    for top in ("embeddings", "errors"):
        for folder, _dirs, files in os.walk(root / top):
            for name in files:
                match = _PART.search(name)
                if name.endswith(".tmp") or (match and not state.has(int(match.group(1)))):
                    (Path(folder) / name).unlink(missing_ok=True)


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


def clear_output(out: str) -> None:
    """``--overwrite``: remove what an earlier extraction wrote to ``out``, and nothing else."""
    root = locate(out)
    if not root.exists():
        return
    models = [info.base_name for info in list_dir(root.child("embeddings"))]
    for name in ("embeddings", "errors", LEDGER_DIR, "_staging"):
        loc = root.child(name)
        if loc.is_dir():
            root.fs.delete_dir(loc.path)
    files = [LEDGER_FILE, "settings.json", "errors.jsonl", "manifest.json", "pca.png"]
    files += [f"{m}{suffix}" for m in models for suffix in (".npy", ".ids.txt")]
    for name in files:
        loc = root.child(name)
        if loc.exists():
            root.fs.delete_file(loc.path)


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


def bad_row_record(bad: Any) -> dict[str, Any]:
    return {"id": bad.id, "reason": bad.reason, "source": bad.source, "bad_row": True}


def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
