"""Small torch-free types shared by every layer of the project."""

from __future__ import annotations

from enum import StrEnum


class Modality(StrEnum):
    AUDIO = "audio"
    IMAGE = "image"
    TEXT = "text"

    @classmethod
    def parse(cls, value: str) -> Modality:
        from d2v.errors import InvalidInput

        try:
            return cls(value.lower())
        except ValueError:
            raise InvalidInput(f"unknown modality {value!r}; expected one of: audio, image, text") from None
