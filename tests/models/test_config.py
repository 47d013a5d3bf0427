import json
import subprocess
import sys

import pytest

from d2v.core.config import from_dict, to_dict
from d2v.core.errors import ConfigError
from d2v.models.config import (
    Data2VecConfig,
    EmbeddingConfig,
    TransformerConfig,
    default_embedding_config,
    preset,
)


@pytest.mark.parametrize("modality", ["audio", "image", "text"])
@pytest.mark.parametrize("size", ["tiny", "base", "large"])
@pytest.mark.parametrize("version", [1, 2])
def test_presets_round_trip_through_json(modality, size, version):
    cfg = preset(modality, size, version)
    assert from_dict(Data2VecConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_recipe_facts():
    audio = preset("audio", "base", 1)
    assert audio.audio.pos_conv_kernel == 19  # max(3, 95 // 5)
    assert [spec[2] for spec in audio.audio.conv_layers] == [5, 2, 2, 2, 2, 2, 2]
    assert not audio.transformer.layer_norm_first and audio.targets.top_k == 8
    vision = preset("image", "base", 1)
    assert vision.transformer.rel_pos_bias == "shared" and not vision.transformer.k_bias
    assert vision.transformer.layer_norm_first and vision.image.positions == "none"
    assert preset("image", "base", 2).prenet_depth == 2 and preset("image", "base", 2).image.positions == "sincos"
    assert preset("audio", "large", 2).transformer.alibi and preset("audio", "large", 2).transformer.depth == 24
    assert preset("text", "base", 1).text.max_tokens == 512


def test_unknown_field_is_named():
    data = to_dict(preset("audio", "tiny"))
    data["transformer"]["dimm"] = 3
    with pytest.raises(ConfigError, match=r"model\.transformer.*dimm"):
        from_dict(Data2VecConfig, data, where="model")
    with pytest.raises(ConfigError, match="pooling"):
        from_dict(EmbeddingConfig, {"top_k": 2, "pooling": "max"})
    with pytest.raises(ConfigError, match="depth"):
        from_dict(TransformerConfig, {"depth": "12"})


def test_invalid_values():
    with pytest.raises(ConfigError, match="divisible"):
        TransformerConfig(dim=10, num_heads=4)
    with pytest.raises(ConfigError, match="audio must be set"):
        Data2VecConfig("audio")
    with pytest.raises(ConfigError):
        preset("video", "base")


def test_default_embedding_k_scales_with_depth():
    assert default_embedding_config("audio", 12).top_k == 8
    assert default_embedding_config("text", 24).top_k == 10
    assert default_embedding_config("image", 3).top_k == 2
    assert default_embedding_config("audio", 1).top_k == 1


def test_config_module_is_torch_free():
    code = "import sys, d2v.models.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
