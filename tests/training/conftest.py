"""Tiny on-disk datasets (created per session in tmp) and an in-process training helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "cats",
    "sleep",
    "on",
    "warm",
    "mats",
    "and",
    "small",
    "birds",
    "sing",
    "bright",
    "songs",
    "in",
    "tall",
    "green",
    "trees",
    "near",
    "the",
    "quiet",
    "river",
    "under",
    "a",
    "pale",
    "blue",
    "sky",
]


def make_audio_dir(root: Path, n: int = 12, *, corrupt: bool = True) -> Path:
    """Clips at several sample rates / channel counts / formats (WAV, FLAC, OGG), plus one corrupt file."""
    rng = np.random.default_rng(0)
    for i in range(n):
        rate, channels = (16000, 22050, 8000, 44100)[i % 4], 1 + i % 2
        t = np.arange(int(rate * rng.uniform(0.6, 1.2))) / rate
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t)[:, None] + 0.05 * rng.standard_normal(
            (len(t), channels)
        )
        sub = root / ("spk_a" if i % 2 else "spk_b")
        sub.mkdir(parents=True, exist_ok=True)
        sf.write(sub / f"clip{i}.{('wav', 'flac', 'ogg')[i % 3]}", wave.astype(np.float32), rate)
    if corrupt:
        (root / "spk_a" / "corrupt.wav").write_bytes(b"RIFF\x00\x00 this is not audio")
    return root


def make_image_dir(root: Path, n: int = 12, *, corrupt: bool = True, labels: tuple[str, ...] = ("cat", "dog")) -> Path:
    """Images in several modes and sizes under LABEL/ folders; label 1 is brighter than label 0."""
    rng = np.random.default_rng(1)
    for i in range(n):
        label = labels[i % len(labels)]
        base = 60 + 120 * (i % len(labels))
        arr = np.clip(base + 40 * rng.standard_normal((36 + i, 44, 3)), 0, 255).astype(np.uint8)
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).convert(("RGB", "L", "RGBA", "P")[i % 4]).save(root / label / f"im{i}.png")
    if corrupt:
        (root / labels[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def make_text_file(path: Path, n: int = 200) -> Path:
    rng = np.random.default_rng(2)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 24)))) for _ in range(n)]
    lines.append(" ".join(rng.choice(WORDS, size=400)))  # a document longer than a block
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("d2v_data")
    return {
        "audio": make_audio_dir(root / "audio"),
        "image": make_image_dir(root / "images"),
        "text": make_text_file(root / "corpus.txt"),
    }


QUIET = ["run.progress=false", "run.tensorboard=false", "run.log_every=1"]


def tiny_config(recipe: str, data: Path, out: Path, *extra: str):
    from d2v.training.config import load_config, validate

    cfg = load_config(recipe, [f"data.path={data}", f"run.out_dir={out}", *QUIET, *extra])
    validate(cfg)
    return cfg


def train(cfg, resume=None, until=None):
    """Run a training in this process (pausing after step ``until``); returns the Trainer (closed)."""
    from d2v.training.distributed import DistInfo
    from d2v.training.trainer import Trainer

    trainer = Trainer(cfg, DistInfo(), resume=resume).setup()
    try:
        trainer.train(until)
    finally:
        trainer.close()
    return trainer


def losses(run_dir: Path) -> list[float]:
    from d2v.training.metrics import read_metrics

    return [r["loss"] for r in read_metrics(run_dir)]


@pytest.fixture(scope="session")
def h():
    """The helpers above (test modules are imported in importlib mode, without a sys.path entry)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        tiny_config=tiny_config,
        train=train,
        losses=losses,
        make_audio_dir=make_audio_dir,
        make_image_dir=make_image_dir,
        make_text_file=make_text_file,
    )
