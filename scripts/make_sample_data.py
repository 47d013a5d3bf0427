#!/usr/bin/env python
"""Regenerate the small, labelled, offline sample datasets under ``data/`` (see data/README.md).

    .venv/bin/python scripts/make_sample_data.py            # all three modalities
    .venv/bin/python scripts/make_sample_data.py --only text --out /tmp/data

* images: scikit-learn's bundled handwritten digits (1797 8x8 images) upscaled to 32x32 grayscale PNGs;
* audio: the words "zero" ... "nine" synthesised with espeak-ng (several accents, voice variants, speeds and
  pitches), 16 kHz mono FLAC. Skipped, keeping the committed files, when ``espeak-ng`` is not installed;
* text: first paragraphs of Python standard-library docstrings labelled by module family.

Every output is deterministic (fixed seed, sorted inputs); each modality's train/test split is recorded in
its manifest: stratified 80/20 per label for images and text, two held-out speakers (25%) for audio.
Needs numpy, Pillow, soundfile, soxr, scikit-learn and tqdm.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import io
import json
import re
import shutil
import subprocess
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "data"
SEED = 0
TEST_FRACTION = 0.2

# --- images -----------------------------------------------------------------------------------------------
IMAGE_SIZE = 32

# --- audio ------------------------------------------------------------------------------------------------
SAMPLE_RATE = 16_000
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# (espeak-ng language/accent voice, voice variant or None): eight distinct synthetic "speakers".
VOICES: tuple[tuple[str, str | None], ...] = (
    ("en-gb", None),
    ("en-us", "f3"),
    ("en-gb-scotland", "m3"),
    ("en-gb-x-rp", "f2"),
    ("en-029", "m5"),
    ("en-us-nyc", "f4"),
    ("en-gb-x-gbclan", "m7"),
    ("en-gb-x-gbcwmd", "klatt"),
)
# Audio test split = two whole synthetic speakers (speaker-independent evaluation), all their words.
HELD_OUT_VOICES = ("en-029", "en-gb-x-rp")
SPEEDS_WPM = (120, 160, 200)  # espeak-ng -s (default 175)
PITCHES = (30, 70)  # espeak-ng -p, 0..99 (default 50)
TRIM_DB = 40.0  # trim leading/trailing audio quieter than peak - 40 dB ...
TRIM_MARGIN_S = 0.03  # ... keeping 30 ms of it on each side

# --- text -------------------------------------------------------------------------------------------------
# Module family -> standard-library modules whose public functions/classes/methods are documented.
TEXT_FAMILIES: dict[str, tuple[str, ...]] = {
    "files": ("os", "os.path", "io", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "stat"),
    "network": (
        "socket",
        "ssl",
        "http.client",
        "http.server",
        "http.cookies",
        "http.cookiejar",
        "urllib.request",
        "urllib.parse",
        "urllib.robotparser",
        "smtplib",
        "ftplib",
        "poplib",
        "imaplib",
        "socketserver",
        "ipaddress",
        "xmlrpc.client",
        "xmlrpc.server",
        "email.message",
        "email.utils",
        "email.parser",
        "email.headerregistry",
        "mailbox",
    ),
    "formats": (
        "json",
        "csv",
        "xml.etree.ElementTree",
        "xml.dom.minidom",
        "xml.sax.saxutils",
        "html.parser",
        "configparser",
        "tomllib",
        "plistlib",
        "pickle",
        "base64",
        "binascii",
        "struct",
        "quopri",
    ),
    "compression": ("zipfile", "tarfile", "gzip", "bz2", "lzma", "zlib", "zipimport"),
    "math": ("math", "cmath", "statistics", "decimal", "fractions", "random", "numbers"),
    "text": ("string", "re", "textwrap", "difflib", "unicodedata", "codecs", "locale", "gettext"),
    "concurrency": (
        "threading",
        "multiprocessing",
        "multiprocessing.pool",
        "multiprocessing.managers",
        "concurrent.futures",
        "asyncio",
        "queue",
        "sched",
        "subprocess",
        "selectors",
        "signal",
    ),
    "datetime": ("datetime", "time", "calendar", "zoneinfo"),
    "containers": (
        "collections",
        "collections.abc",
        "heapq",
        "bisect",
        "array",
        "itertools",
        "functools",
        "copy",
        "enum",
        "dataclasses",
        "weakref",
        "types",
    ),
    "debugging": ("unittest", "doctest", "pdb", "traceback", "logging", "warnings", "timeit", "cProfile", "trace"),
}
TEXT_MIN_CHARS, TEXT_MAX_CHARS = 30, 600
TEXT_MAX_PER_LABEL = 250
SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)(\s*-+>\s*.*)?$")


def stratified_split(labels: list[str], seed: int = SEED, test_fraction: float = TEST_FRACTION) -> list[str]:
    """'train'/'test' per item: within each label, a seeded shuffle puts ``test_fraction`` (rounded) in test."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    split = ["train"] * len(labels)
    rng = np.random.default_rng(seed)
    for label in sorted(by_label):
        indices = by_label[label]
        order = rng.permutation(len(indices))
        for position in order[: int(round(len(indices) * test_fraction))]:
            split[indices[position]] = "test"
    return split


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------------
def make_images(out: Path) -> dict:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = out / "images"
    reset_dir(root)
    labels = [str(int(t)) for t in digits.target]
    splits = stratified_split(labels)
    rows = []
    for index, (pixels, label, split) in enumerate(zip(digits.images, labels, splits, strict=True)):
        small = Image.fromarray(np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8), mode="L")
        big = small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        rel = Path(label) / f"{index:04d}.png"
        (root / label).mkdir(exist_ok=True)
        big.save(root / rel, optimize=True)
        rows.append({"path": rel.as_posix(), "label": label, "split": split})
    write_csv(root / "manifest.csv", rows)
    return {"items": len(rows), "labels": len(set(labels)), "bytes": dir_size(root)}


# ----------------------------------------------------------------------------------------------------------
def synthesize(word: str, voice: str, variant: str | None, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    name = voice if variant is None else f"{voice}+{variant}"
    cmd = ["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    import soundfile as sf

    wave, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    return wave.mean(axis=1), rate


def trim_silence(wave: np.ndarray, rate: int) -> np.ndarray:
    peak = float(np.abs(wave).max())
    if peak == 0:
        return wave
    loud = np.flatnonzero(np.abs(wave) > peak * 10 ** (-TRIM_DB / 20))
    margin = int(TRIM_MARGIN_S * rate)
    return wave[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def make_audio(out: Path) -> dict:
    import soundfile as sf
    import soxr
    from tqdm import tqdm

    root = out / "audio"
    if shutil.which("espeak-ng") is None:
        print("audio: espeak-ng not found (apt-get install espeak-ng); keeping the committed clips", file=sys.stderr)
        return {"skipped": "espeak-ng not installed"}
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    reset_dir(root)
    jobs = [(w, v, var, s, p) for w in WORDS for v, var in VOICES for s in SPEEDS_WPM for p in PITCHES]
    splits = ["test" if job[1] in HELD_OUT_VOICES else "train" for job in jobs]
    rows = []
    for (word, voice, variant, speed, pitch), split in tqdm(
        list(zip(jobs, splits, strict=True)), desc="espeak-ng", unit="clip"
    ):
        wave, rate = synthesize(word, voice, variant, speed, pitch)
        wave = trim_silence(soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ"), SAMPLE_RATE)
        speaker = voice if variant is None else f"{voice}-{variant}"
        rel = Path(word) / f"{speaker}_{speed}_{pitch}.flac"
        (root / word).mkdir(exist_ok=True)
        sf.write(root / rel, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        rows.append(
            {
                "path": rel.as_posix(),
                "label": word,
                "voice": speaker,
                "speed_wpm": speed,
                "pitch": pitch,
                "seconds": f"{len(wave) / SAMPLE_RATE:.3f}",
                "split": split,
            }
        )
    write_csv(root / "manifest.csv", rows)
    seconds = sum(float(r["seconds"]) for r in rows)
    summary = {"items": len(rows), "labels": len(WORDS), "seconds": round(seconds, 1), "tool": version}
    return {**summary, "bytes": dir_size(root)}


# ----------------------------------------------------------------------------------------------------------
def first_paragraph(doc: str) -> str | None:
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc.strip()) if p.strip()]
    while paragraphs and SIGNATURE_LINE.match(paragraphs[0]):  # "name(args) -> result" lines of C functions
        paragraphs.pop(0)
    if not paragraphs:
        return None
    text = paragraphs[0]
    return text if TEXT_MIN_CHARS <= len(text) <= TEXT_MAX_CHARS else None


def _root(name: str | None) -> str:
    return (name or "").lstrip("_").split(".")[0]


def documented_objects(module_name: str) -> Iterator[tuple[str, str]]:
    """``(qualified name, docstring)`` for the module, its public functions/classes and their public methods."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(module_name)
    roots = {_root(module_name), _root(module.__name__)}
    if module.__doc__:
        yield module_name, module.__doc__
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if _root(getattr(obj, "__module__", None)) not in roots:  # re-exported from elsewhere
            continue
        if obj.__doc__:
            yield f"{module_name}.{name}", obj.__doc__
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if attr.startswith("_") or not (inspect.isroutine(member) or isinstance(member, property)):
                    continue
                doc = getattr(member, "__doc__", None)
                if doc:
                    yield f"{module_name}.{name}.{attr}", doc


def make_text(out: Path) -> dict:
    root = out / "text"
    reset_dir(root)
    seen: dict[str, set[str]] = defaultdict(set)  # text -> labels, to drop texts shared across families
    records: dict[str, list[dict]] = defaultdict(list)
    for label, modules in TEXT_FAMILIES.items():
        for module_name in modules:
            for source, doc in documented_objects(module_name):
                text = first_paragraph(inspect.cleandoc(doc))
                if text is None:
                    continue
                if label not in seen[text]:
                    records[label].append({"text": text, "label": label, "source": source})
                seen[text].add(label)
    rng = np.random.default_rng(SEED)
    kept: list[dict] = []
    for label in TEXT_FAMILIES:
        unique: dict[str, dict] = {}
        for record in records[label]:
            if len(seen[record["text"]]) == 1:
                unique.setdefault(record["text"], record)
        items = sorted(unique.values(), key=lambda r: r["source"])
        if len(items) > TEXT_MAX_PER_LABEL:
            chosen = sorted(rng.choice(len(items), TEXT_MAX_PER_LABEL, replace=False).tolist())
            items = [items[i] for i in chosen]
        kept.extend(items)
    splits = stratified_split([r["label"] for r in kept])
    path = root / "docstrings.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for record, split in zip(kept, splits, strict=True):
            f.write(json.dumps({**record, "split": split}, ensure_ascii=False) + "\n")
    counts = {label: sum(r["label"] == label for r in kept) for label in TEXT_FAMILIES}
    return {
        "items": len(kept),
        "labels": len(counts),
        "per_label": counts,
        "python": sys.version.split()[0],
        "bytes": dir_size(root),
    }


BUILDERS = {"images": make_images, "audio": make_audio, "text": make_text}


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: data/)")
    parser.add_argument("--only", choices=sorted(BUILDERS), action="append", help="build only these (repeatable)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(BUILDERS):
        summary = BUILDERS[name](args.out)
        size = f" {summary['bytes'] / 1e6:.2f} MB" if "bytes" in summary else ""
        print(f"{name}:{size} {json.dumps({k: v for k, v in summary.items() if k != 'bytes'})}")
    print(f"total under {args.out}: {dir_size(args.out) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
