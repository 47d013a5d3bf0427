"""Model store discovery: ``<store>/<name>/model.json`` per exported model, or explicit model directories."""

from __future__ import annotations

from pathlib import Path

from d2v.core.errors import ConfigError, NotFound
from d2v.core.manifest import MANIFEST_FILE, ModelManifest


def discover(store: Path, models: list[str]) -> list[tuple[ModelManifest, Path]]:
    """Resolve ``models`` (names in the store or model directories); empty means every model in the store."""
    if models:
        dirs = []
        for entry in models:
            path = Path(entry).expanduser()
            if (path / MANIFEST_FILE).is_file():
                dirs.append(path)
            elif (store / entry / MANIFEST_FILE).is_file():
                dirs.append(store / entry)
            else:
                raise NotFound(f"model {entry!r}: neither a model directory nor a model in the store {store}")
    else:
        dirs = sorted(p for p in store.glob(f"*/{MANIFEST_FILE}") if p.is_file())
        dirs = [p.parent for p in dirs]
        if not dirs:
            raise ConfigError(
                f"no models in the store {store}: run `d2v quickstart` (default tiny models), `d2v export`, "
                "or pass --model DIR"
            )
    found = [(ModelManifest.load(d), d.resolve()) for d in dirs]
    names = [m.name for m, _ in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"several model directories are named {duplicates}; names must be unique")
    return found
