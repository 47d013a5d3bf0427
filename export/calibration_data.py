"""Real inputs for static int8 calibration: the bundled sample data by default, or the user's own.

``--calibration`` names a directory (images / audio files found recursively; text: ``*.txt`` files, one text
each) or a manifest (``.jsonl`` with ``text`` or ``path`` per line, ``.csv`` with a ``text`` or ``path``
column, ``.txt`` with one path per line for media, one text per line for text). Items are split
deterministically: every fifth is held out to score the variant, the rest calibrate it. Everything goes
through the model's own preprocessing, so the statistics are those of real traffic.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from d2v.core.contract import Arrays
from d2v.core.errors import ConfigError, D2VError, NotFound
from d2v.core.paths import sample_data_dir

MEDIA_EXTENSIONS = {
    "image": (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"),
    "audio": (".wav", ".flac", ".ogg", ".mp3"),
}
SAMPLE_DATA = {"image": "images", "audio": "audio", "text": "text/docstrings.jsonl"}
HELDOUT_EVERY = 5
MAX_CALIBRATION, MAX_HELDOUT = 256, 64


def default_source(modality: str) -> Path:
    return sample_data_dir() / SAMPLE_DATA[modality]


def read_items(modality: str, source: Path) -> list[Any]:
    """Texts (str) or media file paths from ``source``, in a stable order."""
    if source.is_dir():
        if modality == "text":
            return [p.read_text(encoding="utf-8") for p in sorted(source.rglob("*.txt"))]
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS[modality])
    if not source.is_file():
        raise NotFound(f"--calibration {source}: no such file or directory")
    key = "text" if modality == "text" else "path"
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        values = [r.get(key) for r in rows if isinstance(r, dict)]
    elif suffix == ".csv":
        with source.open(newline="", encoding="utf-8") as fh:
            values = [r.get(key) for r in csv.DictReader(fh)]
    elif suffix == ".txt":
        values = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ConfigError(f"--calibration {source}: expected a directory, .jsonl, .csv or .txt")
    values = [v for v in values if isinstance(v, str) and v]
    if modality == "text":
        return values
    return [Path(v) if Path(v).is_absolute() else source.parent / v for v in values]


def split(items: list[Any]) -> tuple[list[Any], list[Any]]:
    """(calibration, held-out): every ``HELDOUT_EVERY``-th item is held out."""
    heldout = items[::HELDOUT_EVERY][:MAX_HELDOUT]
    calibration = [x for i, x in enumerate(items) if i % HELDOUT_EVERY][:MAX_CALIBRATION]
    return calibration, heldout


def batches(preprocessor: Any, items: list[Any], batch_size: int, extra: Arrays) -> list[Arrays]:
    """Decoded, collated feed batches (unreadable items are skipped: calibration data is best effort)."""
    decoded = []
    for item in items:
        try:
            decoded.append(preprocessor.load_item(item if isinstance(item, str) else Path(item).read_bytes()))
        except (D2VError, OSError):
            continue
    out = []
    for start in range(0, len(decoded), batch_size):
        feed = preprocessor.collate(decoded[start : start + batch_size])
        out.append({**{k: np.asarray(v) for k, v in feed.items()}, **extra})
    return out


def calibration_feeds(
    modality: str, preprocessing: Any, base_dir: Path, source: Path | None, extra: Arrays, batch_size: int = 4
) -> tuple[list[Arrays], list[Arrays], dict[str, Any]]:
    """(calibration batches, held-out batches, a description for the report)."""
    from d2v.models.preprocessing import build_preprocessor

    source = Path(source) if source is not None else default_source(modality)
    calibration, heldout = split(read_items(modality, source))
    if not calibration or not heldout:
        found = len(calibration) + len(heldout)
        raise ConfigError(f"--calibration {source}: found {found} {modality} items; need at least 2")
    pre = build_preprocessor(preprocessing, base_dir, truncate=True) if modality == "text" else None
    pre = pre or build_preprocessor(preprocessing, base_dir)
    calib, held = batches(pre, calibration, batch_size, extra), batches(pre, heldout, batch_size, extra)
    info = {"source": str(source), "calibration_items": len(calibration), "heldout_items": len(heldout)}
    return calib, held, info
