"""What to embed: a directory, a JSONL/CSV/Parquet manifest or stdin lines, as a list of :class:`Item`.

Directory: every file whose suffix names a modality; the id is the path relative to the directory and the
label is its first folder. Manifest rows: ``id`` plus ``path`` (relative to the manifest) or ``text``, and
optional ``label`` / ``modality``. Stdin: one input per line (text, or a path with ``--modality``), id =
line number. Rows that cannot become an item are returned as :class:`BadRow` with the reason.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from d2v.core.errors import ConfigError, NotFound

SUFFIXES = {
    "image": {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"},
    "audio": {".wav", ".flac", ".ogg", ".mp3"},
    "text": {".txt", ".md", ".rst"},
}
MANIFEST_SUFFIXES = {".jsonl", ".ndjson", ".csv", ".parquet"}


@dataclass(frozen=True)
class Item:
    """One input. Exactly one of ``path`` and ``text`` is set (a text file has a ``path``)."""

    id: str
    modality: str
    path: str | None = None
    text: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class BadRow:
    """A manifest row that is not an item (reported in the errors file, never embedded)."""

    id: str
    reason: str
    source: str


def modality_of(path: str | Path) -> str | None:
    suffix = Path(path).suffix.lower()
    return next((m for m, s in SUFFIXES.items() if suffix in s), None)


def read_inputs(
    source: str, modality: str | None = None, stdin: TextIO | None = None
) -> tuple[list[Item], list[BadRow]]:
    """The items of a directory, a manifest file or ``-`` (stdin).

    Raises:
        NotFound: ``source`` does not exist.
        ConfigError: an unsupported manifest type, or a directory with no embeddable file.
    """
    if source == "-":
        return _from_lines(stdin or sys.stdin, modality)
    path = Path(source)
    if path.is_dir():
        return _from_directory(path, modality), []
    if not path.is_file():
        raise NotFound(f"input {source!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ConfigError(f"{source}: a manifest must be .jsonl, .csv or .parquet (got {suffix or 'no suffix'})")
    return _from_rows(_manifest_rows(path), path.parent, modality, path.name)


def _from_directory(root: Path, modality: str | None) -> list[Item]:
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        kind = modality_of(path)
        if kind is None or (modality and kind != modality) or any(part.startswith(".") for part in rel.parts):
            continue
        label = rel.parts[0] if len(rel.parts) > 1 else None
        items.append(Item(rel.as_posix(), kind, path=str(path), label=label))
    if not items:
        raise ConfigError(f"no {modality or 'embeddable'} files under {root} (suffixes: {sorted(_all_suffixes())})")
    return items


def _all_suffixes() -> set[str]:
    return set().union(*SUFFIXES.values())


def _manifest_rows(path: Path) -> Iterable[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            yield from enumerate(csv.DictReader(f), start=2)  # line numbers: the header is line 1
    else:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield n, f"invalid JSON: {exc.msg}"


def _from_rows(
    rows: Iterable[tuple[int, Any]], base: Path, modality: str | None, name: str
) -> tuple[list[Item], list[BadRow]]:
    items: list[Item] = []
    bad: list[BadRow] = []
    seen: set[str] = set()
    for n, row in rows:
        where = f"{name}:{n}"
        item_or_reason = _row_item(row, base, modality)
        if isinstance(item_or_reason, str):
            row_id = str(row.get("id")) if isinstance(row, dict) and row.get("id") not in (None, "") else where
            bad.append(BadRow(row_id, item_or_reason, where))
        elif item_or_reason.id in seen:
            bad.append(BadRow(item_or_reason.id, "duplicate id (the first row with it is used)", where))
        else:
            seen.add(item_or_reason.id)
            items.append(item_or_reason)
    return items, bad


def _row_item(row: Any, base: Path, modality: str | None) -> Item | str:
    """An item, or the reason the row is unusable."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return f"expected an object, got {type(row).__name__}"
    row_id, path, text = row.get("id"), row.get("path"), row.get("text")
    if row_id is None or str(row_id) == "":
        return "missing 'id'"
    if bool(path) == bool(text):
        return "needs exactly one of 'path' and 'text'"
    label = row.get("label")
    label = None if label in (None, "") else str(label)
    kind = row.get("modality") or modality
    if text:
        if kind not in (None, "text"):
            return f"a 'text' row cannot have modality {kind!r}"
        return Item(str(row_id), "text", text=str(text), label=label)
    full = Path(str(path))
    full = full if full.is_absolute() else base / full
    kind = kind or modality_of(full)
    if kind not in SUFFIXES:
        return f"cannot infer the modality of {path!r}: give a 'modality' column or --modality"
    return Item(str(row_id), kind, path=str(full), label=label)


def _from_lines(stream: TextIO | io.TextIOBase, modality: str | None) -> tuple[list[Item], list[BadRow]]:
    rows = []
    for n, line in enumerate(stream, start=1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        key = "text" if modality in (None, "text") else "path"
        rows.append((n, {"id": str(n), key: line}))
    return _from_rows(rows, Path.cwd(), modality, "stdin")
