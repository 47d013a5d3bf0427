"""The committed labelled sample data (``data/README.md``) as the workflows use it: the labelled sets for the
probes, the unlabelled train split for pretraining, and what ``d2v probe --data`` reads."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from d2v.core.contract import MODALITIES
from d2v.core.errors import ConfigError, NotFound


@dataclass
class LabelledSet:
    """One modality's labelled sample data: raw items (file paths or texts), labels and the fixed split."""

    modality: str
    items: list[Any]
    labels: list[str]
    splits: list[str]

    def indices(self, split: str) -> np.ndarray:
        return np.asarray([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)


def load_labelled(modality: str, data_dir: str | Path) -> LabelledSet:
    """Read ``data/<modality>``'s manifest (``data/README.md``): images and audio from ``manifest.csv``,
    text from ``docstrings.jsonl``."""
    data_dir = Path(data_dir)
    if modality == "text":
        path = data_dir / "text" / "docstrings.jsonl"
        if not path.is_file():
            raise NotFound(f"labelled text data not found: {path}")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return LabelledSet("text", [r["text"] for r in rows], [r["label"] for r in rows], [r["split"] for r in rows])
    if modality not in ("image", "audio"):
        raise ConfigError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
    root = data_dir / ("images" if modality == "image" else "audio")
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise NotFound(f"labelled {modality} data not found: {manifest}")
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return LabelledSet(
        modality, [root / r["path"] for r in rows], [r["label"] for r in rows], [r["split"] for r in rows]
    )


def write_pretraining_data(modality: str, data_dir: str | Path, out_dir: str | Path) -> Path:
    """The unlabelled pretraining input: the train split only (the test split stays unseen until the probe).

    Images / audio: a list of absolute paths (``.txt`` manifest, one per line); text: a JSONL of ``text``.
    """
    ds = load_labelled(modality, data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = ds.indices("train")
    if modality == "text":
        path = out_dir / "text-train.jsonl"
        path.write_text("".join(json.dumps({"text": ds.items[i]}) + "\n" for i in train), encoding="utf-8")
    else:
        path = out_dir / f"{modality}-train.txt"
        path.write_text("".join(f"{Path(ds.items[i]).resolve()}\n" for i in train))
    return path


def probe_data_path(modality: str, data_dir: str | Path) -> Path:
    """What ``d2v probe --data`` reads for a modality's sample set (the manifests carry the split)."""
    data_dir = Path(data_dir)
    return {"image": data_dir / "images", "audio": data_dir / "audio", "text": data_dir / "text" / "docstrings.jsonl"}[
        modality
    ]
