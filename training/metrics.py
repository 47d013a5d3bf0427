"""Metric sinks for the main process: JSONL (``metrics.jsonl``), TensorBoard, and a tqdm progress bar.

``MetricsLogger.log(step, values)`` appends one JSON line and writes TensorBoard scalars; the progress bar
shows loss, lr, tau, throughput and (tqdm's) ETA. Other ranks get a ``MetricsLogger(enabled=False)`` whose
methods do nothing, so the trainer has no ``if is_main`` around every call.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    def __init__(
        self,
        out_dir: str | Path,
        *,
        total_steps: int,
        initial_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
    ) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._writer = None
        self._bar = None
        self._file = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Resume appends; lines past the resumed step (written after the last checkpoint) are dropped.
        path = self.out_dir / METRICS_FILE
        if path.exists():
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= initial_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=initial_step + 1)
            except ImportError as exc:  # tensorboard is an optional extra
                log.warning("TensorBoard disabled: %s", exc)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(f"train/{key}", value, step)

    def progress(self, step: int, values: dict[str, float]) -> None:
        if self._bar is None:
            return
        self._bar.n = step
        self._bar.set_postfix(
            loss=f"{values.get('loss', float('nan')):.4f}",
            lr=f"{values.get('lr', 0.0):.2e}",
            tau=f"{values.get('tau', 0.0):.5f}",
            sps=f"{values.get('samples_per_s', 0.0):.1f}",
            refresh=False,
        )
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._writer = self._file = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (a run directory or the file); a torn last line is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
