"""The quality report: data loading, trivial baselines, the probe, and the generator end to end (reduced)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"


@pytest.mark.parametrize(("modality", "n", "test"), [("image", 1797, 359), ("audio", 480, 120), ("text", 1974, None)])
def test_labelled_sets_and_pretraining_data(tmp_path, modality, n, test):
    from d2v.workflows.sample_data import load_labelled, write_pretraining_data

    ds = load_labelled(modality, DATA)
    assert len(ds) == n and len(set(ds.labels)) == 10
    train, held_out = ds.indices("train"), ds.indices("test")
    assert len(train) + len(held_out) == n and not set(train) & set(held_out)
    if test is not None:
        assert len(held_out) == test
    path = write_pretraining_data(modality, DATA, tmp_path)
    lines = path.read_text().splitlines()
    assert len(lines) == len(train), "pretraining sees the train split only"
    if modality != "text":
        assert all(Path(line).is_file() for line in lines[:5])


def test_audio_waveform_statistics():
    from d2v.workflows.quality import waveform_statistics

    rate = 16000
    t = np.arange(rate // 2) / rate
    low, high = np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 5000 * t)
    a, b = waveform_statistics(low, rate), waveform_statistics(high, rate)
    assert a.shape == b.shape == (5 + 24,) and np.isfinite(a).all()
    assert a[0] == pytest.approx(0.5) and b[4] > a[4]  # duration; zero-crossing rate
    assert np.argmax(a[5:]) < np.argmax(b[5:])  # energy sits in a higher band
    assert np.isfinite(waveform_statistics(np.zeros(10), rate)).all()  # shorter than one frame


def test_probe_accuracy_on_separable_and_random_features():
    from d2v.workflows.quality import probe_accuracy
    from d2v.workflows.sample_data import LabelledSet

    rng = np.random.default_rng(0)
    labels = [str(i % 4) for i in range(400)]
    splits = ["train" if i < 300 else "test" for i in range(400)]
    ds = LabelledSet("image", list(range(400)), labels, splits)
    centers = rng.normal(size=(4, 8)) * 4
    separable = np.stack([centers[int(y)] + rng.normal(size=8) for y in labels])
    assert probe_accuracy(separable, ds) > 0.95
    assert probe_accuracy(rng.normal(size=(400, 8)), ds) < 0.5
    assert probe_accuracy(separable, ds, train_limit=40) > 0.8


def test_image_and_audio_baselines_beat_chance():
    from d2v.workflows.quality import baseline_features, probe_accuracy
    from d2v.workflows.sample_data import load_labelled

    for modality in ("image", "audio"):
        ds = load_labelled(modality, DATA)
        features = baseline_features(ds)
        assert features.shape[0] == len(ds) and np.isfinite(features).all()
        assert probe_accuracy(features, ds) > 0.5


def test_markdown_keeps_the_tuning_log(tmp_path):
    from d2v.workflows.quality import ATTEMPTS_END, RESULTS_BEGIN, append_attempt, write_markdown

    res = {
        "pretrained": 0.9,
        "random_init": 0.7,
        "baseline": 0.95,
        "gap": 0.2,
        "test_items": 10,
        "baseline_name": "raw pixels",
        "train": {"recipe": "quickstart-image", "steps": 5, "train_seconds": 1.0, "final_loss": 0.5},
    }
    results = {"seed": 0, "modalities": {"image": res}, "overrides": ["image:optim.lr=1e-3"]}
    md = tmp_path / "quality.md"
    append_attempt(md, "first try", results)
    write_markdown(md, results, tmp_path / "quality.png")
    write_markdown(md, {**results, "modalities": {"image": {**res, "pretrained": 0.8, "gap": 0.1}}}, md)
    text = md.read_text()
    assert text.count(RESULTS_BEGIN) == 1 and "**80.0**" in text and "**90.0**" not in text
    assert "| first try | `image:optim.lr=1e-3` | image=5 |  | 90.0 / 70.0 (+20.0) |  |" in text
    assert text.index("first try") < text.index(ATTEMPTS_END)


@pytest.mark.slow
def test_report_generator_runs_on_a_reduced_budget(tmp_path):
    """``d2v quality-report`` end to end: pretrain (2 steps), export, probe, write markdown + PNG."""
    from d2v.cli import main

    md, png, js = tmp_path / "quality.md", tmp_path / "quality.png", tmp_path / "quality.json"
    argv = ["quality-report", "--modalities", "image", "--max-steps", "2", "--no-progress"]
    assert main([*argv, "--out", str(md), "--json", str(js)]) == 0
    import json

    results = json.loads(js.read_text())
    image = results["modalities"]["image"]
    assert {"pretrained", "random_init", "baseline", "gap"} <= set(image)
    assert 0.0 <= image["random_init"] <= 1.0 and image["baseline"] > 0.9  # raw pixels on digits
    assert image["train"]["steps"] == 2
    text = md.read_text()
    assert "| image | 359 |" in text and "quality.png" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
