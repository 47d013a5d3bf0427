"""``d2v probe``: labelled-set readers, the shared embedding path, random-init baseline, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2v.training.probe import read_labelled, run_probe, split_indices

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image_checkpoint(h, tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe_run")
    h.train(h.tiny_config("tiny-image-v2", tiny_data["image"], out, "run.max_steps=2", "data.batch_size=4"))
    return out / "checkpoints" / "latest"


def test_readers(tmp_path, h):
    tree = h.make_image_dir(tmp_path / "tree", n=6, corrupt=False)
    examples = read_labelled(tree, "image")
    assert sorted({e.label for e in examples}) == ["cat", "dog"] and len(examples) == 6
    (tmp_path / "set.jsonl").write_text(
        '{"text": "a b", "label": "x", "split": "train"}\n{"text": "c d", "label": "y", "split": "test"}\n'
    )
    examples = read_labelled(tmp_path / "set.jsonl", "text")
    assert [(e.raw, e.label, e.split) for e in examples] == [("a b", "x", "train"), ("c d", "y", "test")]
    train, test = split_indices(examples, 0.5, 0)
    assert train.tolist() == [0] and test.tolist() == [1]
    (tmp_path / "m.csv").write_text("path,label,split\ncat/im0.png,cat,train\n")
    (tmp_path / "cat").mkdir()
    assert read_labelled(tmp_path / "m.csv", "image")[0].raw == tmp_path / "cat" / "im0.png"


def test_probe_uses_the_shared_embedding_path(image_checkpoint, tmp_path, h):
    import torch

    from d2v.models.checkpoint import load_checkpoint
    from d2v.models.embedding import extract_embeddings
    from d2v.models.preprocessing import build_preprocessor
    from d2v.training.probe import embed

    data = h.make_image_dir(tmp_path / "labelled", n=20, corrupt=True)
    report = run_probe(image_checkpoint, data, test_fraction=0.3)
    assert report["skipped"] == 1 and report["num_classes"] == 2
    assert report["test_accuracy"] >= report["majority_baseline"]  # the two classes differ in brightness
    baseline = run_probe(image_checkpoint, data, random_init=True)
    assert baseline["random_init"] and baseline["dim"] == report["dim"]

    # Same vectors as the server's path: preprocessing + extract_embeddings with the checkpoint's config.
    ckpt = load_checkpoint(image_checkpoint)
    pre = build_preprocessor(ckpt.preprocessing, ckpt.path)
    examples = [e for e in read_labelled(data, "image") if "broken" not in str(e.raw)][:3]
    vectors, kept = embed(ckpt.model, pre, examples, ckpt.embedding, batch_size=2)
    batch = pre.collate([pre.load_item(e.raw) for e in examples])
    with torch.no_grad():
        ref = extract_embeddings(ckpt.model, torch.from_numpy(batch["pixel_values"]), None, ckpt.embedding).mean
    np.testing.assert_allclose(vectors, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_probe_cli(image_checkpoint, tmp_path, h):
    data = h.make_image_dir(tmp_path / "labelled", n=12, corrupt=False)
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "d2v.cli", "probe", str(image_checkpoint), "--data", str(data), "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    assert 0.0 <= json.loads(out.read_text())["test_accuracy"] <= 1.0
    bad = subprocess.run([sys.executable, "-m", "d2v.cli", "probe", str(image_checkpoint), "--data", "/nonexistent"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "--data" in bad.stderr
