"""What to embed, read lazily: a directory, a JSONL/CSV/Parquet manifest or stdin lines, one row at a time.

Directory (any filesystem, ``fs``): every file whose suffix names a modality, walked in sorted order one
folder at a time; the id is the path relative to the directory and the label is its first folder. Manifest
rows: ``id`` plus ``path`` (relative to the manifest, absolute, or a URI) or ``text``, and optional
``label`` / ``modality``; JSONL and CSV are read line by line, Parquet by record batches. Stdin: one input
per line (text, or a path with ``--modality``), id = line number. The readers themselves are ``rows``;
``plan`` cuts their stream into partitions.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from d2v.core.errors import ConfigError, NotFound

from .fs import Location, list_dir, locate, resolve_input

SUFFIXES = {
    "image": {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"},
    "audio": {".wav", ".flac", ".ogg", ".mp3"},
    "text": {".txt", ".md", ".rst"},
}
MANIFEST_SUFFIXES = {".jsonl", ".ndjson", ".csv", ".parquet"}


@dataclass(frozen=True)
class Item:
    """One input. Exactly one of ``path`` and ``text`` is set (a text file has a ``path``: a path or URI)."""

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
    suffix = posixpath.splitext(str(path))[1].lower()
    return next((m for m, s in SUFFIXES.items() if suffix in s), None)


def all_suffixes() -> set[str]:
    return set().union(*SUFFIXES.values())


@dataclass(frozen=True)
class Source:
    """An input source: ``kind`` is ``directory``, ``jsonl``, ``csv``, ``parquet`` or ``stdin``."""

    uri: str
    kind: str
    location: Location | None = None  # None for stdin
    modality: str | None = None  # --modality: a filter for directories, the default for manifest rows

    @property
    def name(self) -> str:
        return "stdin" if self.location is None else posixpath.basename(self.location.path.rstrip("/"))


def open_source(uri: str, modality: str | None = None) -> Source:
    """Classify ``uri`` (``-`` is stdin) without reading it.

    Raises:
        NotFound: ``uri`` does not exist.
        ConfigError: an unsupported manifest type, or an unknown URI scheme.
    """
    if uri == "-":
        return Source(uri, "stdin", None, modality)
    loc = locate(uri)
    info = loc.info()
    if info.type == pafs.FileType.Directory:
        return Source(uri, "directory", loc, modality)
    if info.type == pafs.FileType.NotFound:
        raise NotFound(f"input {uri!r} does not exist")
    suffix = posixpath.splitext(loc.path)[1].lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ConfigError(f"{uri}: a manifest must be .jsonl, .csv or .parquet (got {suffix or 'no suffix'})")
    return Source(uri, {".ndjson": "jsonl"}.get(suffix, suffix[1:]), loc, modality)


def walk(loc: Location) -> Iterator[pafs.FileInfo]:
    """Files under ``loc`` depth first, each folder's entries sorted by name; hidden entries skipped.
    One folder's listing is held at a time (plus the open folders above it). The order is that of the
    relative paths' component tuples, which is what lets ``rows`` read a range of the walk alone."""
    for info in list_dir(loc):
        if info.base_name.startswith("."):
            continue
        if info.type == pafs.FileType.Directory:
            yield from walk(Location(loc.fs, info.path, loc.uri))
        elif info.type == pafs.FileType.File:
            yield info


def row_item(row: Any, base: str, modality: str | None) -> Item | str:
    """An item from one manifest row, or the reason the row is unusable (``base``: the manifest's folder)."""
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
    full = resolve_input(str(path), base)
    kind = kind or modality_of(full)
    if kind not in SUFFIXES:
        return f"cannot infer the modality of {path!r}: give a 'modality' column or --modality"
    return Item(str(row_id), kind, path=full, label=label)


def source_base(source: Source) -> str:
    """What a manifest's relative ``path`` values are relative to: its folder (stdin: the working directory)."""
    if source.location is None:
        return str(Path.cwd())
    if source.kind == "directory":
        return source.uri
    if source.location.local:
        return str(Path(source.location.path).parent)
    return source.uri.rsplit("/", 1)[0]


def count_rows(source: Source) -> int | None:
    """How many rows ``raw_rows`` will yield, cheaply (for the progress bar's total and ETA), or ``None``.

    Parquet: from the footer. JSONL/CSV: newlines counted in 1 MiB blocks (an upper bound: blank lines count).
    Directory: a listing-only walk. Stdin: unknown.
    """
    if source.kind == "stdin":
        return None
    loc = source.location
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        with loc.fs.open_input_file(loc.path) as f:
            return pq.ParquetFile(f).metadata.num_rows
    if source.kind == "directory":
        wanted = {source.modality} if source.modality else set(SUFFIXES)
        return sum(1 for info in walk(loc) if modality_of(info.path) in wanted)
    lines, last = 0, b"\n"
    with loc.fs.open_input_stream(loc.path) as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    return max(0, lines - (source.kind == "csv"))
