"""HF repo layouts as the hub has them: weights as safetensors, sharded safetensors, pytorch_model.bin (never
unpickled beyond tensors) or sharded .bin; preprocessor_config.json for vision and audio."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from d2v.core.errors import ConfigError, NotFound  # noqa: E402
from d2v.models.checkpoint import load_checkpoint  # noqa: E402
from d2v.models.convert.hf import convert_hf  # noqa: E402
from d2v.models.preprocessing import build_preprocessor  # noqa: E402


def _vision(path):
    from transformers import Data2VecVisionConfig, Data2VecVisionModel

    torch.manual_seed(0)
    cfg = Data2VecVisionConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        use_shared_relative_position_bias=True,
        use_mean_pooling=False,
        layer_norm_eps=1e-6,
    )
    model = Data2VecVisionModel(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(path)
    return model


def _weights_only(path):
    """A repo directory with config.json and nothing else (the weights are written by the test)."""
    path.mkdir()
    (path / "config.json").write_text((path.parent / "hf" / "config.json").read_text())
    return path


def _state(ckpt_dir):
    return load_checkpoint(ckpt_dir).model.state_dict()


def _assert_same_model(a, b):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.fixture
def reference(tmp_path):
    """(hf model, its model.safetensors conversion)."""
    model = _vision(tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "ref")
    return model, tmp_path / "ref"


def test_pytorch_model_bin_only(tmp_path, reference):
    model, ref = reference
    src = _weights_only(tmp_path / "bin")
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    convert_hf(src, tmp_path / "out")
    _assert_same_model(ref, tmp_path / "out")


def test_sharded_safetensors(tmp_path, reference):
    model, ref = reference
    model.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    convert_hf(tmp_path / "sharded", tmp_path / "out")
    _assert_same_model(ref, tmp_path / "out")
    (tmp_path / "sharded" / sorted((tmp_path / "sharded").glob("model-*.safetensors"))[-1].name).unlink()
    with pytest.raises(NotFound, match="listed in model.safetensors.index.json"):
        convert_hf(tmp_path / "sharded", tmp_path / "out2")


def test_sharded_pytorch_model_bin(tmp_path, reference):
    model, ref = reference
    src = _weights_only(tmp_path / "binshards")
    state = model.state_dict()
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    weight_map = {}
    for file, keys in halves.items():
        torch.save({k: state[k] for k in keys}, src / file)
        weight_map.update(dict.fromkeys(keys, file))
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    convert_hf(src, tmp_path / "out")
    _assert_same_model(ref, tmp_path / "out")


class _Payload:
    """Pickles as a call to ``open(marker, "w")``: harmless, and visible if anything unpickles it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_in_pytorch_model_bin_is_refused(tmp_path, reference):
    model, _ = reference
    src = _weights_only(tmp_path / "evil")
    marker = tmp_path / "executed"
    torch.save({**model.state_dict(), "payload": _Payload(marker)}, src / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="cannot read weights"):
        convert_hf(src, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_no_weights(tmp_path, reference):
    src = _weights_only(tmp_path / "empty")
    with pytest.raises(NotFound, match="no model.safetensors"):
        convert_hf(src, tmp_path / "out")


def _png(size: tuple[int, int], seed: int = 0) -> bytes:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_vision_preprocessor_config_is_used_and_matches_transformers(tmp_path, reference):
    from PIL import Image
    from transformers import BeitImageProcessorPil

    processor = BeitImageProcessorPil(
        do_resize=True,
        size={"height": 40, "width": 40},
        do_center_crop=True,
        crop_size={"height": 32, "width": 32},
        resample=2,  # bilinear
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor.save_pretrained(tmp_path / "hf")
    result = convert_hf(tmp_path / "hf", tmp_path / "out")
    pre_cfg = load_checkpoint(tmp_path / "out").preprocessing
    assert (pre_cfg.resize_size, pre_cfg.image_size, pre_cfg.interpolation) == (40, 32, "bilinear")
    assert pre_cfg.mean == (0.5, 0.5, 0.5) and pre_cfg.std == (0.5, 0.5, 0.5)
    assert any("aspect ratio" in note for note in result.notes)

    # A square image goes through the same resize, crop and normalisation as transformers'.
    png = _png((57, 57))
    ours = build_preprocessor(pre_cfg).load_item(png)
    theirs = processor(Image.open(io.BytesIO(png)).convert("RGB"), return_tensors="np")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 32, 32)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_vision_preprocessor_config_old_style(tmp_path, reference):
    """The BeitFeatureExtractor layout of early hub repos: int sizes, no center crop."""
    config = {
        "do_resize": True,
        "size": 32,
        "do_center_crop": False,
        "crop_size": 224,
        "resample": 3,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "feature_extractor_type": "BeitFeatureExtractor",
    }
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(config))
    result = convert_hf(tmp_path / "hf", tmp_path / "out")
    pre_cfg = load_checkpoint(tmp_path / "out").preprocessing
    assert (pre_cfg.resize_size, pre_cfg.image_size, pre_cfg.interpolation) == (32, 32, "bicubic")
    assert result.notes == []
    config.update(size=48, do_center_crop=True, crop_size=40, resample=0)
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(config))
    result = convert_hf(tmp_path / "hf", tmp_path / "out2")
    assert load_checkpoint(tmp_path / "out2").preprocessing.resize_size == 48
    assert any("gives 40px images" in n for n in result.notes) and any("resample 0" in n for n in result.notes)
    config.update(size={"height": 40, "width": 48})
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="square"):
        convert_hf(tmp_path / "hf", tmp_path / "out3")


def test_audio_preprocessor_config_is_used(tmp_path):
    from transformers import Data2VecAudioConfig, Data2VecAudioModel, Wav2Vec2FeatureExtractor

    cfg = Data2VecAudioConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16,) * 7,
        num_conv_pos_embedding_groups=4,
        num_conv_pos_embeddings=2,
    )
    Data2VecAudioModel(cfg).save_pretrained(tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "default")
    default = load_checkpoint(tmp_path / "default").preprocessing
    assert (default.sample_rate, default.normalize) == (16000, True)
    Wav2Vec2FeatureExtractor(sampling_rate=8000, do_normalize=False).save_pretrained(tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "out")
    pre_cfg = load_checkpoint(tmp_path / "out").preprocessing
    assert (pre_cfg.sample_rate, pre_cfg.normalize) == (8000, False)
