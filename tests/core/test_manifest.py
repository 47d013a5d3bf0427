"""ModelManifest: round trip, defaults, and validation naming the problem."""

from __future__ import annotations

import json

import pytest
from testkit import write_model

from d2v.core.errors import ConfigError, NotFound
from d2v.core.manifest import ModelManifest


def test_round_trip_and_triton_defaults(tmp_path):
    path = write_model(tmp_path, "image", "img")
    manifest = ModelManifest.load(path)
    assert manifest.modality == "image" and manifest.has_cls and not manifest.supports_top_k
    assert (manifest.triton.encoder, manifest.triton.preprocess, manifest.triton.ensemble) == (
        "img_encoder",
        "img_preprocess",
        "img",
    )
    manifest.save(tmp_path / "copy")
    assert ModelManifest.load(tmp_path / "copy") == manifest
    assert manifest.variant_file(path) == path / "model.onnx"
    with pytest.raises(NotFound):
        manifest.variant_file(path, "int8")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"format": "other"}, "format"),
        ({"version": 2}, "version"),
        ({"top_k": 9}, "top_k"),
        ({"pooling": "cls"}, "pooling"),  # audio has no cls
        ({"outputs": {}}, "outputs lack"),
        ({"default_variant": "int8"}, "default_variant"),
        ({"supports_top_k": True}, "supports_top_k"),
        ({"typo_field": 1}, "unknown"),
    ],
)
def test_validation_errors(tmp_path, change, needle):
    path = write_model(tmp_path, "audio", "aud")
    data = json.loads((path / "model.json").read_text())
    data.update(change)
    with pytest.raises(ConfigError, match=needle):
        ModelManifest.from_dict(data)


def test_missing_manifest(tmp_path):
    with pytest.raises(NotFound):
        ModelManifest.load(tmp_path)
