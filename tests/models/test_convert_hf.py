"""HF parity: small random transformers models -> save_pretrained -> `d2v convert hf` -> every layer equal.

transformers is a test-only oracle; everything runs offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from d2v.cli import main  # noqa: E402
from d2v.models.checkpoint import load_checkpoint  # noqa: E402

ATOL = 1e-4


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """HF inits many tensors to constants (LayerNorm 1/0, zero bias tables, constant LayerScale); perturb
    every parameter so a mis-mapped one cannot hide."""
    g = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        scale = 1.0 if "relative_position_bias_table" in name else 0.1
        param.add_(torch.randn(param.shape, generator=g) * scale)


def _save(model, path, tokenizer: bool = False):
    model.save_pretrained(path)
    if tokenizer:
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel

        Tokenizer(WordLevel({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}, unk_token="<unk>")).save(
            str(path / "tokenizer.json")
        )
    return path


def _convert(src, out) -> None:
    assert main(["convert", "hf", str(src), str(out)]) == 0


def _ffn_hooks(modules) -> list[torch.Tensor]:
    captured: list[torch.Tensor] = []
    for module in modules:
        module.register_forward_hook(lambda _m, _i, output: captured.append(output))
    return captured


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor, real: torch.Tensor | None, what: str) -> None:
    if real is not None:  # padded positions are unspecified; compare real tokens only
        ours, theirs = ours[real], theirs[real]
    diff = (ours - theirs).abs().max().item()
    assert diff <= ATOL, f"{what}: max abs diff {diff:.2e}"


def _check_layers(hf_out, hf_ffn, out, real):
    depth = len(out.layers)
    assert len(hf_out.hidden_states) == depth + 1
    for i, layer in enumerate(out.layers):
        _assert_close(layer.block, hf_out.hidden_states[i + 1], real, f"layer {i} block")
        if hf_ffn:
            _assert_close(layer.ffn, hf_ffn[i], real, f"layer {i} ffn")
    _assert_close(out.last_hidden, hf_out.last_hidden_state, real, "last hidden")


def test_text_parity(tmp_path):
    from transformers import Data2VecTextConfig, Data2VecTextModel

    torch.manual_seed(0)
    hf_cfg = Data2VecTextConfig(
        vocab_size=97,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=40,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    )
    hf = Data2VecTextModel(hf_cfg).eval()
    _randomize(hf, 1)
    _convert(_save(hf, tmp_path / "hf", tokenizer=True), tmp_path / "ckpt")
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()
    assert ckpt.embedding.top_k == 2 and ckpt.config.text.max_positions == 40

    lengths = torch.tensor([13, 9, 4])
    attention_mask = (torch.arange(13)[None] < lengths[:, None]).long()
    ids = torch.randint(3, 97, (3, 13)).masked_fill(attention_mask == 0, 1)
    hf_ffn = _ffn_hooks(layer.output.dense for layer in hf.encoder.layer)
    with torch.no_grad():
        hf_out = hf(ids, attention_mask=attention_mask, output_hidden_states=True)
        out = ckpt.model.encode(ids, attention_mask == 0)
        front = ckpt.model.front_end(ids, attention_mask == 0).tokens
    real = attention_mask.bool()
    _assert_close(front, hf_out.hidden_states[0], real, "embeddings")
    _check_layers(hf_out, hf_ffn, out, real)


def test_audio_parity(tmp_path):
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    torch.manual_seed(0)
    hf_cfg = Data2VecAudioConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embedding_groups=16,
        conv_pos_kernel_size=19,
        num_conv_pos_embeddings=3,  # = number of pos-conv layers for data2vec audio (spec §8.10)
    )
    hf = Data2VecAudioModel(hf_cfg).eval()
    _randomize(hf, 2)
    src = _save(hf, tmp_path / "hf")
    (src / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000, "do_normalize": False}))
    _convert(src, tmp_path / "ckpt")
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.config.audio.pos_conv_depth == 3 and ckpt.config.audio.pos_conv_kernel == 19
    assert ckpt.preprocessing.normalize is False
    # Converted models re-zero padding after every pos-conv layer (batch-independent embeddings); HF's padded
    # batches leak padding into the last real frames, so the padded-batch comparison switches that off ...
    assert ckpt.config.audio.pos_conv_zero_padding
    ckpt.model.front_end.pos_conv.zero_padding = False

    lengths = torch.tensor([8001, 6399, 4321])
    attention_mask = (torch.arange(8001)[None] < lengths[:, None]).long()
    wave = torch.randn(3, 8001) * attention_mask
    hf_ffn = _ffn_hooks(layer.feed_forward.output_dense for layer in hf.encoder.layers)
    with torch.no_grad():
        hf_out = hf(wave, attention_mask=attention_mask, output_hidden_states=True)
        out = ckpt.model.encode(wave, attention_mask == 0)
        front = ckpt.model.front_end(wave, attention_mask == 0).tokens
    expected_frames = hf._get_feature_vector_attention_mask(out.last_hidden.shape[1], attention_mask)
    assert torch.equal(~out.padding_mask, expected_frames)
    real = ~out.padding_mask
    _assert_close(front, hf_out.hidden_states[0], real, "pos-conv + layer norm")
    _check_layers(hf_out, hf_ffn, out, real)

    # Unpadded rows agree with HF run without an attention mask.
    with torch.no_grad():
        hf_single = hf(wave[:1], output_hidden_states=True).last_hidden_state
    _assert_close(ckpt.model.encode(wave[:1]).last_hidden, hf_single, None, "unpadded")

    # ... and with it on (the converted default), every padded row equals HF on that clip alone.
    ckpt.model.front_end.pos_conv.zero_padding = True
    with torch.no_grad():
        ours = ckpt.model.encode(wave, attention_mask == 0)
        for row, n in enumerate(lengths.tolist()):
            alone = hf(wave[row : row + 1, :n], output_hidden_states=True)
            frames = alone.last_hidden_state.shape[1]
            for layer, hidden in enumerate(alone.hidden_states[1:]):
                _assert_close(
                    ours.layers[layer].block[row : row + 1, :frames], hidden, None, f"row {row} layer {layer}"
                )


def test_vision_parity(tmp_path):
    from transformers import Data2VecVisionConfig, Data2VecVisionModel

    torch.manual_seed(0)
    hf_cfg = Data2VecVisionConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        use_shared_relative_position_bias=True,
        use_mask_token=True,
        layer_scale_init_value=0.1,
        use_mean_pooling=False,
        layer_norm_eps=1e-6,
    )
    hf = Data2VecVisionModel(hf_cfg).eval()
    _randomize(hf, 3)
    _convert(_save(hf, tmp_path / "hf"), tmp_path / "ckpt")
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.config.transformer.norm_eps == 1e-6 and ckpt.config.transformer.rel_pos_bias == "shared"

    pixels = torch.randn(3, 3, 32, 32)
    hf_ffn = _ffn_hooks(layer.output.dense for layer in hf.encoder.layer)
    with torch.no_grad():
        hf_out = hf(pixels, output_hidden_states=True)
        out = ckpt.model.encode(pixels)
    _check_layers(hf_out, hf_ffn, out, None)

    # v1 masking: HF bool_masked_pos == our mask_mode="replace".
    mask = torch.rand(3, 16) < 0.5
    with torch.no_grad():
        hf_masked = hf(pixels, bool_masked_pos=mask).last_hidden_state
        ours_masked = ckpt.model.encode(pixels, mask=mask).last_hidden
    _assert_close(ours_masked, hf_masked, None, "masked")


def test_cli_errors(tmp_path, capsys):
    assert main(["convert", "hf", str(tmp_path / "missing"), str(tmp_path / "out")]) != 0
    assert "not a directory" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["convert", "hf", str(bad), str(tmp_path / "out")]) != 0
    assert "unsupported model_type" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_text_without_tokenizer_needs_flag(tmp_path):
    from transformers import Data2VecTextConfig, Data2VecTextModel

    cfg = Data2VecTextConfig(
        vocab_size=20,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=20,
    )
    src = _save(Data2VecTextModel(cfg), tmp_path / "hf")
    assert main(["convert", "hf", str(src), str(tmp_path / "out")]) != 0
    assert main(["convert", "hf", str(src), str(tmp_path / "out"), "--no-tokenizer"]) == 0
    assert load_checkpoint(tmp_path / "out").config.transformer.depth == 1


def test_cli_subprocess_bad_path(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "d2v", "convert", "hf", str(tmp_path / "nope"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    assert "d2v convert: error:" in result.stderr


# ------------------------------------------------------------------------------------------ task models

AUDIO_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    num_conv_pos_embedding_groups=16,
    conv_pos_kernel_size=19,
    num_conv_pos_embeddings=3,
)
TEXT_TINY = dict(
    vocab_size=97,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=40,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
)
VISION_TINY = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    use_shared_relative_position_bias=True,
    layer_norm_eps=1e-6,
)
XVECTOR = dict(tdnn_dim=(16, 16, 24), tdnn_kernel=(5, 3, 1), tdnn_dilation=(1, 2, 1), xvector_output_dim=8)
# (task class, config overrides, the prefixes its file holds outside the converted base model)
TASKS = [
    ("Data2VecAudioForCTC", {"vocab_size": 12}, {"lm_head"}),
    (
        "Data2VecAudioForSequenceClassification",
        {"use_weighted_layer_sum": True, "classifier_proj_size": 8, "num_labels": 3},
        {"projector", "classifier", "layer_weights"},
    ),
    (
        "Data2VecAudioForXVector",
        {**XVECTOR, "num_labels": 3},
        {"projector", "tdnn", "feature_extractor", "classifier", "objective"},
    ),
    ("Data2VecAudioForAudioFrameClassification", {"num_labels": 3}, {"classifier"}),
    ("Data2VecTextForMaskedLM", {}, {"lm_head"}),
    ("Data2VecTextForSequenceClassification", {"num_labels": 3}, {"classifier"}),
    ("Data2VecTextForMultipleChoice", {}, {"data2vec_text.pooler", "classifier"}),
    ("Data2VecTextForQuestionAnswering", {}, {"qa_outputs"}),
    ("Data2VecVisionForImageClassification", {"num_labels": 5}, {"data2vec_vision.pooler", "classifier"}),
    (
        "Data2VecVisionForSemanticSegmentation",
        {"out_indices": [0, 1, 2, 2], "pool_scales": [1, 2], "auxiliary_channels": 16},
        {"fpn1", "fpn2", "decode_head", "auxiliary_head"},
    ),
]


def _task_model(name: str, overrides: dict):
    modality = "audio" if "Audio" in name else "text" if "Text" in name else "vision"
    tiny = {"audio": AUDIO_TINY, "text": TEXT_TINY, "vision": VISION_TINY}[modality]
    config_cls = getattr(transformers, f"Data2Vec{modality.title()}Config")
    torch.manual_seed(0)
    hf = getattr(transformers, name)(config_cls(**{**tiny, **overrides})).eval()
    _randomize(hf, 4)
    return modality, hf


@torch.no_grad()
def _base_outputs(modality: str, hf):
    """(our input, transformers' base-model outputs with hidden states) on an unpadded batch."""
    g = torch.Generator().manual_seed(5)
    if modality == "audio":
        x = torch.randn(2, 4000, generator=g)
        return x, hf.data2vec_audio(x, output_hidden_states=True)
    if modality == "text":
        x = torch.randint(3, TEXT_TINY["vocab_size"], (2, 11), generator=g)
        return x, hf.data2vec_text(x, output_hidden_states=True)
    x = torch.randn(2, 3, 32, 32, generator=g)
    return x, hf.data2vec_vision(x, output_hidden_states=True)


@pytest.mark.parametrize(("name", "overrides", "heads"), TASKS, ids=[t[0] for t in TASKS])
def test_task_model_converts_its_base_and_reports_the_heads(tmp_path, name, overrides, heads):
    from safetensors import safe_open

    from d2v.models.convert.hf import convert_hf

    modality, hf = _task_model(name, overrides)
    src = _save(hf, tmp_path / "hf", tokenizer=modality == "text")
    result = convert_hf(src, tmp_path / "ckpt")
    assert result.architecture == name and set(result.dropped) == heads

    # Every tensor of the file is either in the converted model or counted under a dropped prefix.
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        saved = {key: f.get_slice(key).get_shape() for key in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    for prefix, dropped in result.dropped.items():
        inside = [shape for key, shape in saved.items() if key.startswith(prefix + ".") or key == prefix]
        assert dropped.tensors == len(inside) > 0
        assert dropped.parameters == sum(int(torch.Size(s).numel()) for s in inside)
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.source["architecture"] == name
    assert ckpt.source["dropped"] == {k: vars(v) for k, v in result.dropped.items()}
    converted = sum(p.numel() for n, p in ckpt.model.state_dict().items() if "mask" not in n)
    dropped_total = sum(d.parameters for d in result.dropped.values())
    base_total = sum(int(torch.Size(s).numel()) for k, s in saved.items() if "mask" not in k)
    if modality != "text":  # text folds the token-type row into the positions: counts differ by design
        assert converted + dropped_total == base_total

    x, hf_out = _base_outputs(modality, hf)
    with torch.no_grad():
        out = ckpt.model.encode(x)
    _check_layers(hf_out, None, out, None)


def test_cli_prints_what_it_dropped(tmp_path, capsys):
    _, hf = _task_model("Data2VecAudioForCTC", {"vocab_size": 12})
    src = _save(hf, tmp_path / "hf")
    assert main(["convert", "hf", str(src), str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    lm_head = 32 * 12 + 12
    assert "converted Data2VecAudioForCTC (audio)" in out
    assert f"lm_head: 2 tensors, {lm_head:,} parameters" in out


def test_per_layer_relative_position_bias_is_refused(tmp_path, capsys):
    overrides = {"use_shared_relative_position_bias": False, "use_relative_position_bias": True}
    _, hf = _task_model("Data2VecVisionForImageClassification", overrides)
    src = _save(hf, tmp_path / "hf")
    assert main(["convert", "hf", str(src), str(tmp_path / "ckpt")]) != 0
    assert "use_relative_position_bias" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()
