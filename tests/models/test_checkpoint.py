import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from d2v.core.errors import ConfigError, NotFound
from d2v.models.checkpoint import load_checkpoint, save_checkpoint
from d2v.models.config import EmbeddingConfig
from d2v.models.preprocessing.config import (
    AudioPreprocessingConfig,
    ImagePreprocessingConfig,
    TextPreprocessingConfig,
)

PREPROCESSING = {
    "audio": AudioPreprocessingConfig(),
    "image": ImagePreprocessingConfig(image_size=32),
    "text": TextPreprocessingConfig(max_length=64),
}


@pytest.mark.parametrize("version", [1, 2])
def test_round_trip_is_bit_identical(tmp_path, modality, version, tiny_model, tiny_batch):
    model = tiny_model(modality, version, seed=5)
    tokenizer = None
    if modality == "text":
        tokenizer = tmp_path / "tok.json"
        tokenizer.write_text('{"model": {}}')
    embedding = EmbeddingConfig(top_k=3, norm="target", pooling="cls" if modality != "audio" else "mean")
    path = save_checkpoint(
        tmp_path / "ckpt", model, PREPROCESSING[modality], embedding, tokenizer_json=tokenizer, source={"why": "test"}
    )
    loaded = load_checkpoint(path)
    assert not loaded.model.training
    assert loaded.config == model.config and loaded.embedding == embedding
    assert loaded.preprocessing == PREPROCESSING[modality] and loaded.source == {"why": "test"}
    assert (path / "tokenizer.json").is_file() == (modality == "text")
    inputs, attention_mask = tiny_batch(modality)
    padding = None if attention_mask is None else attention_mask == 0
    with torch.no_grad():
        assert torch.equal(model.encode(inputs, padding).last_hidden, loaded.model.encode(inputs, padding).last_hidden)
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == "d2v-checkpoint" and config["version"] == 1
    assert set(config) == {"format", "version", "model", "preprocessing", "embedding", "source"}


def test_overwrite_is_atomic_and_leaves_no_temp_dirs(tmp_path, tiny_model):
    first, second = tiny_model("audio", seed=1), tiny_model("audio", seed=2)
    save_checkpoint(tmp_path / "ckpt", first, AudioPreprocessingConfig(), EmbeddingConfig())
    save_checkpoint(tmp_path / "ckpt", second, AudioPreprocessingConfig(), EmbeddingConfig(top_k=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.embedding.top_k == 2
    weight = "transformer.blocks.0.mlp.fc1.weight"
    assert torch.equal(loaded.model.state_dict()[weight], second.state_dict()[weight])


def test_failed_save_keeps_the_old_checkpoint(tmp_path, tiny_model):
    model = tiny_model("text")
    save_checkpoint(tmp_path / "ckpt", model, TextPreprocessingConfig(), EmbeddingConfig())
    with pytest.raises(FileNotFoundError):
        save_checkpoint(tmp_path / "ckpt", model, TextPreprocessingConfig(), EmbeddingConfig(), tokenizer_json="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="preprocessing is for audio"):
        save_checkpoint(tmp_path / "x", model, AudioPreprocessingConfig(), EmbeddingConfig())


def test_load_errors(tmp_path, tiny_model):
    with pytest.raises(NotFound):
        load_checkpoint(tmp_path / "missing")
    path = save_checkpoint(tmp_path / "ckpt", tiny_model("text"), TextPreprocessingConfig(), EmbeddingConfig())
    config = json.loads((path / "config.json").read_text())
    config["model"]["transformer"]["depthh"] = 2
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="depthh"):
        load_checkpoint(path)
    del config["model"]["transformer"]["depthh"]
    (path / "config.json").write_text(json.dumps(config))
    state = load_file(str(path / "model.safetensors"))
    state.pop("transformer.blocks.0.mlp.fc1.bias")
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ConfigError, match="missing"):
        load_checkpoint(path)
