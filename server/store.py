"""Model store discovery (``<store>/<name>/model.json``) and the registry of served models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from d2v.errors import ConfigError, InvalidInput, NotFound, Unavailable
from d2v.export.manifest import MANIFEST_FILE, ModelManifest

from .pipeline import ServedModel


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


class ModelRegistry:
    def __init__(self, models: list[ServedModel]) -> None:
        self._models = {m.name: m for m in models}

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise NotFound(
                f"model {name!r} is not served here; available: {sorted(self._models)}", code="model_not_found"
            )
        return model

    def resolve(self, modality: str, name: str | None = None) -> ServedModel:
        """The model for a request: by name (checking its modality) or the only one serving ``modality``."""
        if name is not None:
            model = self.get(name)
            if model.modality != modality:
                raise InvalidInput(f"model {name!r} embeds {model.modality}, not {modality}")
        else:
            candidates = [m for m in self if m.modality == modality]
            if not candidates:
                raise NotFound(f"no model serves {modality} here", code="model_not_found")
            if len(candidates) > 1:
                names = sorted(m.name for m in candidates)
                raise InvalidInput(f"several models serve {modality} ({names}): pass 'model'")
            model = candidates[0]
        if not model.ready:
            raise Unavailable(f"model {model.name!r} is loading or warming up; retry shortly")
        return model

    @property
    def ready(self) -> bool:
        return len(self) > 0 and all(m.ready for m in self)
