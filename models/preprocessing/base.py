"""What every preprocessor shares: the ``Preprocessor`` protocol and helpers to read raw inputs.

Torch-free (numpy only). A preprocessor turns one raw input into one decoded item (``load_item``) and
a list of decoded items into the model's named input arrays (``collate``); the array names are the ONNX
input names of docs/contracts.md.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import numpy as np

from d2v.core.errors import InvalidInput, NotFound

PathLike = str | os.PathLike


@runtime_checkable
class Preprocessor(Protocol):
    """The interface shared by ``TextPreprocessor``, ``AudioPreprocessor`` and ``ImagePreprocessor``."""

    modality: str

    def load_item(self, raw: Any) -> Any:
        """Decode and validate one raw input; raise ``InvalidInput`` (or a subclass) when it is unusable."""
        ...

    def collate(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Batch decoded items into the model's named input arrays (right padding, ``attention_mask`` 0)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The limits and parameters in force (for ``/v1/models``, logs and error messages)."""
        ...


class PreprocessorBase:
    """Small shared implementation: ``__call__`` decodes a list of raw inputs and collates them."""

    modality: str = ""

    def load_item(self, raw: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def collate(self, items: list[Any]) -> dict[str, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, raws: list[Any]) -> dict[str, np.ndarray]:
        """``collate([load_item(r) for r in raws])``."""
        return self.collate([self.load_item(raw) for raw in raws])

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "modality")
        return f"{type(self).__name__}({limits})"


def check_batch(items: list[Any], modality: str) -> None:
    if not isinstance(items, list | tuple):
        raise InvalidInput(f"{modality} collate expects a list of decoded items, got {type(items).__name__}")
    if len(items) == 0:
        raise InvalidInput(f"cannot collate an empty {modality} batch")


def is_bytes_like(raw: Any) -> bool:
    return isinstance(raw, bytes | bytearray | memoryview)


def is_path_like(raw: Any) -> bool:
    return isinstance(raw, str | os.PathLike)


def open_binary(raw: Any, what: str) -> BinaryIO:
    """A readable, seekable binary stream for bytes, a path or an open binary file object.

    Paths are opened (the caller closes the stream); a missing path raises ``NotFound``. Bytes are wrapped
    in ``BytesIO`` without a copy beyond ``bytes()`` for ``memoryview``/``bytearray``.
    """
    if is_bytes_like(raw):
        data = bytes(raw)
        if not data:
            raise InvalidInput(f"{what} is empty (0 bytes)")
        return io.BytesIO(data)
    if is_path_like(raw):
        path = Path(raw)
        if not path.is_file():
            raise NotFound(f"{what} file not found: {path}")
        if path.stat().st_size == 0:
            raise InvalidInput(f"{what} file is empty (0 bytes): {path}")
        return path.open("rb")
    if hasattr(raw, "read") and hasattr(raw, "seek"):
        return raw
    raise InvalidInput(f"{what} must be bytes, a path or a binary file object, got {type(raw).__name__}")
