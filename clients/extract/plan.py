"""The partition plan: the input stream cut into deterministic partitions of ``size`` rows.

Partition ``k`` is rows ``[k * size, (k + 1) * size)`` of ``inputs.raw_rows`` (a sorted directory walk, or
a manifest in file order), so the same input and size always give the same partitions. A partition is the
unit of work, of commit (``shards``: one ledger line each) and of resume: a re-run walks the stream again,
skips the partitions the ledger names without building their items, and embeds the rest. The driver holds
the partitions in flight and nothing else: memory does not grow with the corpus.

A manifest row that cannot become an item (no id, bad JSON, an id already used earlier in the same
partition, ...) is a :class:`BadRow` of its partition and is committed with it (``errors/part-K.jsonl``).
Ids must be unique across the input: checking that across partitions would need every id in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from .inputs import BadRow, Item, Source, count_rows, raw_rows, row_item, source_base


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


class Plan:
    """Lazy partitions of one source. ``partitions(skip)`` streams them; ``total_rows()`` sizes the bar."""

    def __init__(self, source: Source, size: int, stdin: TextIO | None = None) -> None:
        self.source = source
        self.size = size
        self._stdin = stdin
        self._base = source_base(source)

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
