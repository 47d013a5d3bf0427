"""The committed sample datasets (data/, built by scripts/make_sample_data.py) are complete and load through
the preprocessors."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from d2v.models.preprocessing import AudioPreprocessor, ImagePreprocessingConfig, ImagePreprocessor

DATA = Path(__file__).resolve().parents[3] / "data"


def read_manifest(modality):
    with (DATA / modality / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


def test_images_manifest_and_files():
    rows = read_manifest("images")
    assert len(rows) == 1797 and {r["label"] for r in rows} == {str(d) for d in range(10)}
    assert Counter(r["split"] for r in rows) == {"train": 1438, "test": 359}
    assert all((DATA / "images" / r["path"]).is_file() for r in rows)
    pre = ImagePreprocessor(ImagePreprocessingConfig(image_size=32, resize_size=32))
    batch = pre([DATA / "images" / r["path"] for r in rows[:4]])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)


def test_audio_manifest_and_files():
    rows = read_manifest("audio")
    assert len(rows) == 480 and len({r["label"] for r in rows}) == 10 and len({r["voice"] for r in rows}) == 8
    test_voices = {r["voice"] for r in rows if r["split"] == "test"}
    assert len(test_voices) == 2 and not test_voices & {r["voice"] for r in rows if r["split"] == "train"}
    assert all((DATA / "audio" / r["path"]).is_file() for r in rows)
    pre = AudioPreprocessor()
    for row in rows[::97]:
        wave = pre.load_item(DATA / "audio" / row["path"])
        assert wave.shape[0] == pytest.approx(float(row["seconds"]) * 16000, abs=8)  # seconds has 3 decimals
        assert abs(float(wave.std()) - 1) < 1e-2  # layer-norm eps 1e-5 shrinks quiet clips slightly


def test_text_records():
    records = [json.loads(line) for line in (DATA / "text" / "docstrings.jsonl").read_text("utf-8").splitlines()]
    assert 1000 <= len(records) <= 3000
    assert all(set(r) == {"text", "label", "source", "split"} and r["text"] for r in records)
    labels = Counter(r["label"] for r in records)
    assert len(labels) == 10 and min(labels.values()) >= 50
    test_share = np.mean([r["split"] == "test" for r in records])
    assert 0.15 < test_share < 0.25
    assert len({r["text"] for r in records}) == len(records)
