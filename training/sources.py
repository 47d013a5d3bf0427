"""Where pretraining data comes from: media files under a directory tree or listed in a manifest (fairseq TSV,
JSONL, CSV, plain lists), and text corpora (plain text or JSONL). Torch-free."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from d2v.core.errors import ConfigError, D2VError, NotFound
from d2v.models.preprocessing.audio import probe

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
TEXT_EXTENSIONS = (".txt", ".jsonl", ".json")


def list_media_files(path: str | Path, extensions: tuple[str, ...], what: str) -> list[Path]:
    """A directory tree (files with ``extensions``, sorted) or a manifest of paths.

    Manifests: fairseq TSV (first line = root directory, then ``relative_path<TAB>frames``), JSONL with a
    ``path`` (or ``audio``/``image``/``file``) key, or one path per line; relative paths are resolved against
    the manifest's directory (or the TSV root).
    """
    path = Path(path)
    if not path.exists():
        raise NotFound(f"data.path: not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    elif path.suffix.lower() in extensions:
        files = [path]
    else:
        files = read_manifest(path)
    if not files:
        raise NotFound(f"data.path: no {what} files ({', '.join(extensions)}) found in {path}")
    return files


def read_manifest(path: Path) -> list[Path]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return []
    root = path.parent
    if path.suffix.lower() == ".jsonl":
        files = []
        for n, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"data.path: {path}:{n}: not valid JSON ({exc.msg})") from None
            value = next((record[k] for k in ("path", "audio", "image", "file") if k in record), None)
            if not isinstance(value, str):
                raise ConfigError(f"data.path: {path}:{n}: expected a 'path' field")
            files.append(root / value)
        return files
    if path.suffix.lower() == ".tsv" and "\t" not in lines[0] and Path(lines[0].strip()).is_dir():
        root, lines = Path(lines[0].strip()), lines[1:]  # fairseq manifest
    return [root / line.split("\t")[0].strip() for line in lines]


def audio_lengths(files: list[Path], sample_rate: int, *, threads: int = 8) -> list[int | None]:
    """Each file's length in samples at ``sample_rate``, read from its header (no decoding); None for a file
    whose header cannot be read (the reason is logged). Length-grouped batching needs every length up front,
    as fairseq's manifests (``path<TAB>frames``) provide them; headers are read by ``threads`` threads."""

    def length(path: Path) -> int | None:
        try:
            info = probe(path)
        except (D2VError, OSError) as exc:
            log.warning("skipping unreadable audio file %s: %s", path, getattr(exc, "message", None) or exc)
            return None
        return int(info.frames * sample_rate / info.sample_rate + 0.5)  # soxr's output length

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(length, files))


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """Documents of a plain-text file (one per non-empty line), a JSONL file (``text_field``) or a tree of them."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"data.path: not found: {path}")
    files = list_media_files(path, TEXT_EXTENSIONS, "text") if path.is_dir() else [path]
    docs: list[str] = []
    for file in files:
        try:
            content = file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            log.warning("skipping unreadable text file %s: %s", file, exc)
            continue
        if file.suffix.lower() in (".jsonl", ".json"):
            for n, line in enumerate(content.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line).get(text_field)
                except (json.JSONDecodeError, AttributeError):
                    value = None
                if not isinstance(value, str):
                    log.warning("skipping %s:%d: no string field %r", file, n, text_field)
                    continue
                docs.append(value)
        else:
            docs.extend(line for line in content.splitlines() if line.strip())
    if not docs:
        raise NotFound(f"data.path: no text found in {path}")
    return docs
