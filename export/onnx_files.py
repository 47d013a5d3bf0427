"""ONNX files on disk: the graph in ``<file>``, every weight in ``<file>.data`` beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_with_external_data(model: Any, path: Path) -> None:
    """Write ``model`` (an ``onnx.ModelProto``) to ``path`` with its weights in ``path.data``, replacing both."""
    import onnx

    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
