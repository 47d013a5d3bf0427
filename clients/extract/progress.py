"""The progress bar (items, with items/s and ETA; partitions committed in its postfix) and the run summary."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


class Progress:
    """``tqdm`` over the rows of the input: ``total`` may be ``None`` (stdin), then it shows the rate only.

    Rows of partitions committed by an earlier run count as already done (``initial``), so the ETA is the
    time the rest takes at this run's rate.
    """

    def __init__(self, total: int | None, partition_size: int, done_rows: int, done_parts: int, enabled: bool):
        from tqdm import tqdm

        self.parts_total = None if total is None else -(-total // partition_size)
        self.parts_done = done_parts
        self.rows_done = done_rows
        self.start = time.perf_counter()
        self.this_run = 0
        self.bar = tqdm(
            total=total,
            initial=min(done_rows, total) if total is not None else done_rows,
            unit="item",
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0.05,
            file=sys.stderr,
        )
        self._postfix()

    def items(self, n: int) -> None:
        """``n`` more rows embedded (or failed) this run."""
        self.this_run += n
        self.bar.update(n)

    def partition(self) -> None:
        self.parts_done += 1
        self._postfix()

    def _postfix(self) -> None:
        total = "?" if self.parts_total is None else self.parts_total
        self.bar.set_postfix_str(f"partitions {self.parts_done}/{total}", refresh=False)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class Summary:
    """What the end of a run reports (the manifest's ``summary``, the last stderr line, the plot's caption)."""

    rows: int  # embedded, all runs
    errors: int  # failed items + unusable rows, all runs
    partitions: int
    this_run: int
    elapsed_s: float
    driver_peak_rss_mb: float
    worker_peak_rss_mb: float | None = None  # Ray: the largest engine actor's

    @property
    def items_per_s(self) -> float:
        return round(self.this_run / max(self.elapsed_s, 1e-9), 2)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {**out, "elapsed_s": round(self.elapsed_s, 3), "items_per_s": self.items_per_s}

    def caption(self) -> str:
        worker = f", worker peak RSS {self.worker_peak_rss_mb:.0f} MB" if self.worker_peak_rss_mb else ""
        return (
            f"{self.rows} rows, {self.errors} errors, {self.partitions} partitions; this run {self.this_run} items "
            f"in {self.elapsed_s:.1f} s ({self.items_per_s} items/s), driver peak RSS "
            f"{self.driver_peak_rss_mb:.0f} MB{worker}"
        )
