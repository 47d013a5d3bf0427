"""The partition plan: the input stream cut into deterministic partitions of ``size`` rows.

Partition ``k`` is rows ``[k * size, (k + 1) * size)`` of ``inputs.raw_rows`` (a sorted directory walk, or
a manifest in file order), so the same input and size always give the same partitions. A partition is the
unit of work, of commit (``shards``: one ledger line each) and of resume: a re-run walks the stream again,
skips the partitions the ledger names without building their items, and embeds the rest. The driver holds
the partitions in flight and nothing else: memory does not grow with the corpus.

A manifest row that cannot become an item (no id, bad JSON, an id already used earlier in the same
partition, ...) is a :class:`BadRow` of its partition and is committed with it (``errors/part-K.jsonl``).
Ids must be unique across the input: checking that across partitions would need every id in memory.

``spans`` gives the same partitions as :class:`Span` records (index, row count and :class:`rows.Extent`)
without building them, and ``read`` builds them from their spans: the Ray engine cuts the input into spans on
the driver and reads the rows on its workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from d2v.core.errors import ConfigError

from .inputs import BadRow, Item, Source, count_rows, row_item, source_base
from .rows import Extent, raw_rows, row_marks, rows_in


@dataclass
class Partition:
    """One unit of work: its index in the plan, its items and its unusable rows (input order)."""

    index: int
    items: list[Item] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    first: str = ""  # where its first row is (``name:line`` or a relative path), for the ledger
    last: str = ""
    ids: set[str] = field(default_factory=set, repr=False)  # while it is being filled

    @property
    def size(self) -> int:
        return len(self.items) + len(self.bad_rows)


@dataclass(frozen=True)
class Span:
    """A partition by address: what a worker needs to read it (``Plan.read``), a few dozen bytes."""

    index: int
    rows: int
    extent: Extent
    first: str
    last: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "extent": asdict(self.extent)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Span:
        return cls(d["index"], d["rows"], Extent(**d["extent"]), d["first"], d["last"])


class Plan:
    """Lazy partitions of one source. ``partitions(skip)`` streams them; ``total_rows()`` sizes the bar."""

    def __init__(self, source: Source, size: int, stdin: TextIO | None = None) -> None:
        self.source = source
        self.size = size
        self._stdin = stdin
        self._base = source_base(source)
        self._per_run: int | None = None  # Parquet: spans per read pass (``joins``)

    def describe(self) -> dict[str, Any]:
        """What the plan depends on (an output resumed with another plan would mis-skip partitions)."""
        return {"input": self.source.uri, "partition_size": self.size, "modality": self.source.modality}

    def settings(self, output: dict[str, Any]) -> dict[str, Any]:
        """``settings.json``: what the vectors are made with (``backends.output_settings``) plus this plan."""
        return {**output, "plan": self.describe()}

    def total_rows(self) -> int | None:
        return count_rows(self.source)

    def partitions(self, skip: Callable[[int], bool] = lambda k: False) -> Iterator[Partition]:
        """Every partition in order, except those ``skip(index)`` is true for (their rows are read, not kept)."""
        index, filled, current = 0, 0, None
        for where, row in raw_rows(self.source, self._stdin):
            if filled == 0:
                current = None if skip(index) else Partition(index, first=where)
            if current is not None:
                self._add(current, where, row)
            filled += 1
            if filled == self.size:
                if current is not None:
                    yield _finished(current)
                index, filled = index + 1, 0
        if filled and current is not None:
            yield _finished(current)

    def spans(self, skip: Callable[[int], bool] = lambda k: False) -> Iterator[Span]:
        """The partitions ``partitions(skip)`` would give, as spans: rows are located, never built.

        Raises:
            ConfigError: stdin (it can be read once, by this process only).
        """
        if self.source.kind == "stdin":
            raise ConfigError("stdin cannot be split into spans for other processes to read: write it to a file")
        if self.source.kind == "parquet":
            yield from self._parquet_spans(skip)
            return
        index, filled, head = 0, 0, None
        for where, begin, end, number in row_marks(self.source):
            if filled == 0:
                head = (where, begin, number)
            filled += 1
            if filled == self.size:
                if not skip(index):
                    yield Span(index, filled, Extent(head[1], end, head[2]), head[0], where)
                index, filled = index + 1, 0
        if filled and not skip(index):
            yield Span(index, filled, Extent(head[1], end, head[2]), head[0], where)

    def _parquet_spans(self, skip: Callable[[int], bool]) -> Iterator[Span]:
        total, name = count_rows(self.source) or 0, self.source.name
        for index in range(-(-total // self.size)):
            begin, end = index * self.size, min((index + 1) * self.size, total)
            if not skip(index):
                yield Span(index, end - begin, Extent(begin, end), f"{name}:{begin + 1}", f"{name}:{end}")

    def pending(self, skip: Callable[[int], bool]) -> Iterator[Partition]:
        """``partitions(skip)`` for a resumed output: the spans locate the pending partitions (a newline scan,
        a Parquet footer, a listing walk) and only those are read and parsed; stdin streams as before."""
        if self.source.kind == "stdin":
            yield from self.partitions(skip)
            return
        for run in self.runs(self.spans(skip)):
            yield from self.read_run(run)

    def runs(self, spans: Iterable[Span]) -> Iterator[list[Span]]:
        """``spans`` as read units: consecutive spans within one Parquet row group's reach are read together
        (so a large row group is decoded once, not once per partition); any other span alone."""
        run: list[Span] = []
        for span in spans:
            if run and not self.joins(run, span):
                yield run
                run = []
            run.append(span)
        if run:
            yield run

    def joins(self, run: list[Span], span: Span) -> bool:
        """Whether ``span`` is read in the same pass as ``run`` (see ``runs``)."""
        if self.source.kind != "parquet" or run[-1].index + 1 != span.index:
            return False
        if self._per_run is None:
            self._per_run = self.spans_per_row_group()
        return len(run) < self._per_run

    def spans_per_row_group(self) -> int:
        """Parquet: how many partitions the largest row group holds (at least 1)."""
        import pyarrow.parquet as pq

        loc = self.source.location
        with loc.fs.open_input_file(loc.path) as f:
            meta = pq.ParquetFile(f).metadata
        largest = max((meta.row_group(g).num_rows for g in range(meta.num_row_groups)), default=0)
        return max(1, -(-largest // self.size))

    def read(self, span: Span) -> Partition:
        """The partition ``span`` addresses, as ``partitions`` builds it.

        Raises:
            ConfigError: the rows there are not the span's (the input changed since it was planned).
        """
        part = Partition(span.index, first=span.first)
        for where, row in rows_in(self.source, span.extent):
            self._add(part, where, row)
        return self._checked(span, part)

    def _checked(self, span: Span, part: Partition) -> Partition:
        if part.size != span.rows or part.last != span.last:
            raise ConfigError(
                f"{self.source.uri} changed while being read: partition {span.index} was planned as {span.rows} rows "
                f"({span.first} .. {span.last}) and holds {part.size} ({part.first} .. {part.last})"
            )
        return _finished(part)

    def read_run(self, spans: list[Span]) -> Iterator[Partition]:
        """The partitions of consecutive ``spans`` (indices ``k, k+1, ...``), read in one pass over the
        source (a Parquet row group that holds several of them is decoded once).

        Raises:
            ConfigError: as ``read``.
        """
        if len(spans) == 1:
            yield self.read(spans[0])
            return
        todo = iter(spans)
        span = next(todo)
        part = Partition(span.index, first=span.first)
        for where, row in rows_in(self.source, _joined(spans)):
            if part.size == span.rows:
                yield self._checked(span, part)
                span = next(todo, None)
                if span is None:
                    break
                part = Partition(span.index, first=span.first)
            self._add(part, where, row)
        else:
            yield self._checked(span, part)

    def _add(self, part: Partition, where: str, row: Any) -> None:
        part.last = where
        item = row_item(row, self._base, self.source.modality)
        if isinstance(item, str):
            row_id = str(row.get("id")) if isinstance(row, dict) and row.get("id") not in (None, "") else where
            part.bad_rows.append(BadRow(row_id, item, where))
        elif item.id in part.ids:  # within a partition; the first row with the id is used
            part.bad_rows.append(BadRow(item.id, "duplicate id (the first row with it is used)", where))
        else:
            part.ids.add(item.id)
            part.items.append(item)


def _finished(part: Partition) -> Partition:
    part.ids = set()
    return part


def _joined(spans: list[Span]) -> Extent:
    """One extent over consecutive spans."""
    return Extent(spans[0].extent.begin, spans[-1].extent.end, spans[0].extent.number)
