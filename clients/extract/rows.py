"""The row readers: each source kind read whole (``raw_rows``) or over an :class:`Extent` of it (``rows_in``).

An extent is where a run of rows lies, small enough to send to a worker that reads those rows itself (the Ray
engine): a directory's first and last relative path (the walk is ordered by path components, so the files
between two paths are found by listing only the folders on the way), a JSONL or CSV manifest's byte range
and the number of its first row, a Parquet manifest's row range. ``row_marks`` finds the extents of every row
without building rows: paths from a listing-only walk, byte offsets from a line scan (CSV: a parse that keeps
quoted newlines inside their row), so the driver can cut a source of any size into extents in constant memory.

The whole-source readers are the extent readers over everything, so both see the same rows with the same
``where`` (``name:line`` for JSONL, ``name:row`` for CSV and Parquet, the relative path for a directory).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

import pyarrow.fs as pafs

from d2v.core.errors import ConfigError

from .fs import Location, list_dir
from .inputs import Source, all_suffixes, modality_of, walk

_PARQUET_BATCH = 8192  # manifest rows decoded at a time
_COLUMNS = ("id", "path", "text", "label", "modality")


@dataclass(frozen=True)
class Extent:
    """Rows ``begin`` to ``end`` of a source: relative paths (inclusive) for a directory; byte offsets (end
    exclusive) for JSONL / CSV, whose first row is line / row ``number``; row offsets (end exclusive) for
    Parquet."""

    begin: int | str
    end: int | str
    number: int = 1


def raw_rows(source: Source, stdin: TextIO | None = None) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` in input order: ``row`` is a dict or the reason it is unusable. Directory files
    come as ready dicts (``id``, ``path``, ``modality``, ``label``)."""
    if source.kind == "stdin":
        import sys

        key = "text" if source.modality in (None, "text") else "path"
        for n, line in enumerate(stdin or sys.stdin, start=1):
            line = line.rstrip("\n")
            if line.strip():
                yield f"stdin:{n}", {"id": str(n), key: line}
        return
    yield from rows_in(source, None)


def rows_in(source: Source, extent: Extent | None) -> Iterator[tuple[str, Any]]:
    """The rows of ``extent`` of ``source`` (``None``: all of it), as ``raw_rows`` gives them."""
    loc = source.location
    if source.kind == "directory":
        lo, hi = (None, None) if extent is None else (_parts(extent.begin), _parts(extent.end))
        yield from _directory_rows(source, lo, hi)
    elif source.kind == "parquet":
        yield from _parquet_rows(source, 0 if extent is None else extent.begin, None if extent is None else extent.end)
    else:
        begin, end, number = (0, None, 1) if extent is None else (extent.begin, extent.end, extent.number)
        reader = _csv_rows if source.kind == "csv" else _jsonl_rows
        for where, row, _start, _stop in reader(loc, source.name, begin, end, number):
            yield where, row


def row_marks(source: Source) -> Iterator[tuple[str, int | str, int | str, int]]:
    """``(where, begin, end, number)`` of every row of a directory, JSONL or CSV source, in order, without
    building the rows (Parquet needs none: its extents are row ranges)."""
    if source.kind == "directory":
        for where, _row in _directory_rows(source, None, None):
            yield where, where, where, 0
        return
    if source.kind == "csv":
        for where, _row, start, stop in _csv_rows(source.location, source.name, 0, None, 1):
            yield where, start, stop, int(where.rsplit(":", 1)[1])
        return
    for where, _row, start, stop in _jsonl_rows(source.location, source.name, 0, None, 1, parse=False):
        yield where, start, stop, int(where.rsplit(":", 1)[1])


# --------------------------------------------------------------------------------------------- JSONL / CSV
def _lines(f: BinaryIO, begin: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` from byte ``begin`` to ``end`` (lines split at ``\\n``, kept with it)."""
    f.seek(begin)
    pos = begin
    for raw in f:
        if end is not None and pos >= end:
            return
        yield pos, raw
        pos += len(raw)


def _open(loc: Location) -> BinaryIO:
    if loc.local:
        return open(loc.path, "rb")
    return io.BufferedReader(loc.fs.open_input_file(loc.path), buffer_size=1 << 20)  # pyarrow files: no lines


def _jsonl_rows(loc: Location, name: str, begin: int, end: int | None, number: int, parse: bool = True):
    """``(where, row, start, stop)`` per non-blank line; blank lines count in the line numbers."""
    with _open(loc) as f:
        for n, (pos, raw) in enumerate(_lines(f, begin, end), start=number):
            if raw.strip():
                yield f"{name}:{n}", (_json_row(raw) if parse else None), pos, pos + len(raw)


def _json_row(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg}"


def _csv_rows(loc: Location, name: str, begin: int, end: int | None, number: int):
    """``(where, row, start, stop)`` per record (a quoted newline keeps its record whole); ``number`` counts
    records, the header being row 1, as a spreadsheet would; blank lines are skipped, as DictReader does."""
    with _open(loc) as f:
        header_lines = _Tracked(_lines(f, 0, None), loc.uri, 0)
        header = next(csv.reader(header_lines), None)
        if header is None:
            return
        n = number if begin else 2  # the header is row 1
        begin = max(begin, header_lines.pos)
        lines = _Tracked(_lines(f, begin, end), loc.uri, begin)
        start = begin
        for record in csv.reader(lines):
            stop = lines.pos
            if record:
                yield f"{name}:{n}", dict(zip(header, record, strict=False)), start, stop
                n += 1
            start = stop


class _Tracked:
    """Decoded lines for ``csv.reader`` that remember the byte offset after the last line handed out."""

    def __init__(self, lines: Iterable[tuple[int, bytes]], uri: str, pos: int) -> None:
        self._lines, self._uri, self.pos = iter(lines), uri, pos

    def __iter__(self) -> _Tracked:
        return self

    def __next__(self) -> str:
        pos, raw = next(self._lines)
        self.pos = pos + len(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{self._uri}: not UTF-8 text at byte {pos + exc.start}") from exc


# ------------------------------------------------------------------------------------------------- Parquet
def _parquet_rows(source: Source, begin: int, end: int | None) -> Iterator[tuple[str, Any]]:
    """Rows ``[begin, end)``, reading only the row groups that hold them (in batches of 8,192)."""
    import pyarrow.parquet as pq

    loc = source.location
    with loc.fs.open_input_file(loc.path) as f:
        pf = pq.ParquetFile(f)
        columns = [c for c in _COLUMNS if c in pf.schema_arrow.names]
        end = pf.metadata.num_rows if end is None else end
        groups, first, row = [], None, 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row < end and row + n > begin:
                groups.append(g)
                first = row if first is None else first
            row += n
        if not groups:
            return
        n = first
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, row_groups=groups, columns=columns):
            lo, hi = max(begin - n, 0), min(end - n, batch.num_rows)
            if lo < hi:
                for k, row in enumerate(batch.slice(lo, hi - lo).to_pylist()):
                    yield f"{source.name}:{n + lo + k + 1}", row
            n += batch.num_rows
            if n >= end:
                return


# ----------------------------------------------------------------------------------------------- directory
def _parts(rel: int | str) -> tuple[str, ...]:
    return tuple(str(rel).split("/"))


def _directory_rows(
    source: Source, lo: tuple[str, ...] | None, hi: tuple[str, ...] | None
) -> Iterator[tuple[str, Any]]:
    """The files from relative path ``lo`` to ``hi`` (inclusive; ``None``: all) in walk order, listing only
    folders that can hold some of them.

    Raises:
        ConfigError: the whole walk (``lo`` is ``None``) found no file of a wanted modality.
    """
    root = source.location
    prefix = len(root.path.rstrip("/")) + 1
    found = False
    files = walk(root) if lo is None else _walk_between(root, (), lo, hi)
    for info in files:
        kind = modality_of(info.path)
        if kind is None or (source.modality and kind != source.modality):
            continue
        rel = info.path[prefix:]
        parts = rel.split("/")
        found = True
        path = info.path if root.local else f"{source.uri.rstrip('/')}/{rel}"
        yield rel, {"id": rel, "path": path, "modality": kind, "label": parts[0] if len(parts) > 1 else None}
    if lo is None and not found:
        raise ConfigError(
            f"no {source.modality or 'embeddable'} files under {source.uri} (suffixes: {sorted(all_suffixes())})"
        )


def _walk_between(loc: Location, at: tuple[str, ...], lo: tuple[str, ...], hi: tuple[str, ...]):
    """``walk`` restricted to files whose path components lie in ``[lo, hi]``: a folder is entered only when
    its components are between the bounds' prefixes of the same length."""
    for info in list_dir(loc):
        if info.base_name.startswith("."):
            continue
        here = (*at, info.base_name)
        if here > hi[: len(here)]:
            return  # entries are sorted: nothing after this one is in range
        if info.type == pafs.FileType.Directory:
            if here >= lo[: len(here)]:
                yield from _walk_between(Location(loc.fs, info.path, loc.uri), here, lo, hi)
        elif lo <= here <= hi:
            yield info
