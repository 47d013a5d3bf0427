"""The registry of served models: lookup by name or by modality, and overall readiness."""

from __future__ import annotations

from collections.abc import Iterator

from d2v.core.errors import InvalidInput, NotFound, Unavailable

from .served_model import ServedModel


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
