"""``d2v convert fairseq`` against fairseq itself: small random fairseq models of every kind, saved as real
fairseq checkpoints, converted with the CLI, then every block's output, every FFN output, the final output
and the served embedding compared with fairseq's own ``extract_features`` (mask off) at 1e-4 (fp32), on
padded batches where the modality pads. Refusals and provenance need no fairseq."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from d2v.cli import main as d2v_main
from d2v.core.errors import ConfigError, NotFound
from d2v.models.checkpoint import load_checkpoint
from d2v.models.convert.fairseq import convert_fairseq
from d2v.models.embedding import extract_embeddings

TOL = 1e-4
KINDS = ("audio_v1", "text_v1", "audio_v2", "image_v2", "text_v2")
TEXTS = ["the quick brown fox jumps over the lazy dog", "héllo wörld 🎉", "日本語"]


@pytest.fixture(scope="module")
def fairseq_files(fairseq_oracle, tmp_path_factory):
    return fairseq_oracle.build_all(tmp_path_factory.mktemp("fairseq"))


def _convert(files, kind: str, *, teacher: bool = False, name: str | None = None):
    out = files[kind].parent / (name or f"d2v-{kind}{'-teacher' if teacher else ''}")
    if not out.exists():
        args = ["convert", "fairseq", str(files[kind]), str(out), "--dict", str(files["bpe"])]
        assert d2v_main(args + (["--teacher"] if teacher else [])) == 0
    return out


def _batch(kind: str, files, oracle, *, padded: bool = True):
    """Model inputs: (source, padding_mask or None). Audio rows of 1600 / 1150 / 700 samples, zero-padded;
    text: fairseq's own ids of three texts, right-padded with <pad>=1; images are never padded."""
    gen = torch.Generator().manual_seed(1)
    if kind.startswith("audio"):
        lengths = [1600, 1150, 700] if padded else [1600, 1600, 1600]
        source = torch.randn(3, 1600, generator=gen)
        mask = torch.arange(1600)[None, :] >= torch.tensor(lengths)[:, None]
        return source.masked_fill(mask, 0.0), (mask if padded else None)
    if kind.startswith("image"):
        return torch.randn(2, 3, 32, 32, generator=gen), None
    ids = oracle.encode_text(TEXTS, files["bpe"])
    source = torch.full((len(ids), max(map(len, ids))), 1, dtype=torch.long)
    for row, seq in enumerate(ids):
        source[row, : len(seq)] = torch.tensor(seq)
    return source, source.eq(1)


def _expected_mean(ref: dict, top_k: int, extra: int, real: np.ndarray) -> np.ndarray:
    """The served mean embedding computed from fairseq's block outputs: parameter-free LayerNorm per token of
    each of the top-K blocks, averaged, then the mean over real tokens (extra tokens excluded)."""
    num = sum(k.startswith("block_") for k in ref)
    layers = [ref[f"block_{i}"].astype(np.float64) for i in range(num - top_k, num)]
    normed = [(x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) for x in layers]
    body, m = np.mean(normed, axis=0)[:, extra:], real[:, extra:, None]
    return (body * m).sum(1) / m.sum(1)


def _compare(model, embedding_cfg, ref: dict, source, padding_mask) -> float:
    """Max abs difference over every block / FFN output (real tokens), the final output and the embedding."""
    with torch.no_grad():
        out = model.encode(source, padding_mask)
        attention = None if padding_mask is None else (~padding_mask).long()
        served = extract_embeddings(model, source, attention, embedding_cfg)
    real = ~out.padding_mask
    assert len(out.layers) == sum(k.startswith("block_") for k in ref)
    worst = 0.0
    for i, layer in enumerate(out.layers):
        for name, ours in (("block", layer.block), ("ffn", layer.ffn)):
            theirs = torch.from_numpy(ref[f"{name}_{i}"])
            assert theirs.shape == ours.shape, name
            worst = max(worst, (ours - theirs).abs()[real].max().item())
    extra = model.num_extra_tokens
    final = out.last_hidden[:, extra:] - torch.from_numpy(ref["x"])  # fairseq's x has the extra tokens removed
    worst = max(worst, final.abs()[real[:, extra:]].max().item())
    expected = _expected_mean(ref, embedding_cfg.top_k, extra, real.numpy())
    worst = max(worst, float(np.abs(served.mean.double().numpy() - expected).max()))
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("teacher", [False, True], ids=["student", "teacher"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_layer_matches_fairseq(fairseq_oracle, fairseq_files, kind, teacher):
    ckpt = load_checkpoint(_convert(fairseq_files, kind, teacher=teacher))
    # fairseq 2.0 audio never zeroes padded frames before its positional conv, so its padded rows depend on
    # their batch: compared unpadded here, padded rows against fairseq's unbatched items below.
    source, padding_mask = _batch(kind, fairseq_files, fairseq_oracle, padded=kind != "audio_v2")
    dict_path = fairseq_files["bpe"] / "dict.txt"
    ref = fairseq_oracle.forward(kind, fairseq_files[kind], source, padding_mask, teacher=teacher, dict_path=dict_path)
    model = ckpt.model
    if kind == "audio_v1":  # fairseq's padded-batch behaviour: padding re-enters after the 1st pos-conv layer
        model.front_end.pos_conv.zero_padding = False
    assert _compare(model, ckpt.embedding, ref, source, padding_mask) <= TOL
    assert ckpt.embedding.top_k == ckpt.config.targets.top_k == 2  # average_top_k_layers of the tiny configs


# Architecture options the released recipes do not use, each converted and compared the same way.
VARIANTS = {
    "audio_v1-groupnorm-preln": (
        "audio_v1",
        {"extractor_mode": "default", "layer_norm_first": True, "conv_bias": True},
    ),
    "text_v1-preln-scaled": (
        "text_v1",
        {"transformer": {"no_scale_embedding": False, "encoder": {"normalize_before": True}}},
    ),
    "audio_v2-alibi-per-layer": (
        "audio_v2",
        {"modalities": {"audio": {"learned_alibi_scale_per_layer": True, "learned_alibi_scale_per_head": False}}},
    ),
    "image_v2-no-prenet-no-affine": ("image_v2", {"norm_affine": False, "modalities": {"image": {"prenet_depth": 0}}}),
    "text_v2-prenet-alibi-scaled": (
        "text_v2",
        {
            "modalities": {
                "text": {
                    "prenet_depth": 1,
                    "use_alibi_encoder": True,
                    "learned_alibi_scale": True,
                    "learned_alibi_scale_per_head": True,
                    "no_scale_embedding": False,
                }
            }
        },
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_architecture_variants_match_fairseq(fairseq_oracle, fairseq_files, variant):
    kind, overrides = VARIANTS[variant]
    path = fairseq_files[kind].parent / f"{variant}.pt"
    dict_path = fairseq_files["bpe"] / "dict.txt"
    fairseq_oracle.build_checkpoint(kind, path, overrides=fairseq_oracle.tiny(kind, **overrides), dict_path=dict_path)
    ckpt = load_checkpoint(convert_fairseq(path, path.with_suffix(""), dict_dir=fairseq_files["bpe"]))
    source, padding_mask = _batch(kind, fairseq_files, fairseq_oracle, padded=kind != "audio_v2")
    ref = fairseq_oracle.forward(kind, path, source, padding_mask, dict_path=dict_path)
    if kind == "audio_v1":
        ckpt.model.front_end.pos_conv.zero_padding = False
    assert _compare(ckpt.model, ckpt.embedding, ref, source, padding_mask) <= TOL
    assert VARIANT_CHECKS[variant](ckpt.config, ckpt.model), "the variant did not reach the converted model"


VARIANT_CHECKS = {
    "audio_v1-groupnorm-preln": lambda c, m: (
        c.audio.extractor_mode == "group_norm"
        and c.audio.conv_bias
        and c.transformer.layer_norm_first
        and c.transformer.final_norm
    ),
    "text_v1-preln-scaled": lambda c, m: c.transformer.layer_norm_first and c.transformer.final_norm,
    "audio_v2-alibi-per-layer": lambda c, m: (
        c.transformer.alibi_per_layer
        and m.transformer.alibi.scale.shape == (c.transformer.depth, c.transformer.num_heads)
        and bool((m.transformer.alibi.scale[0] != m.transformer.alibi.scale[1]).any())
    ),
    "image_v2-no-prenet-no-affine": lambda c, m: (
        c.prenet_depth == 0 and bool((m.transformer.blocks[0].norm1.weight == 1).all())
    ),
    "text_v2-prenet-alibi-scaled": lambda c, m: c.text.context_norm and c.prenet_depth == 1 and c.transformer.alibi,
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["audio_v1", "audio_v2"])
def test_padded_audio_rows_match_fairseq_items_alone(fairseq_oracle, fairseq_files, kind):
    """As served (padded frames re-zeroed in every pos-conv layer), a padded row equals fairseq's output for
    the same clip on its own: what the model saw in pretraining, where batches are cropped."""
    ckpt = load_checkpoint(_convert(fairseq_files, kind))
    assert ckpt.config.audio.pos_conv_zero_padding
    source, padding_mask = _batch(kind, fairseq_files, fairseq_oracle)
    ref = fairseq_oracle.forward(kind, fairseq_files[kind], source, padding_mask, each_alone=True)
    assert _compare(ckpt.model, ckpt.embedding, ref, source, padding_mask) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["audio_v2", "image_v2", "text_v2"])
def test_precomputed_mask_matches_remove_mode(fairseq_oracle, fairseq_files, kind):
    """fairseq's forward with ``precomputed_mask`` (masked tokens removed, as its student sees them) against
    ``encode(mask=..., mask_mode="remove")``: the oracle entry point the training-fidelity tests build on."""
    ckpt = load_checkpoint(_convert(fairseq_files, kind))
    source, padding_mask = _batch(kind, fairseq_files, fairseq_oracle, padded=False)
    if padding_mask is not None:  # text: equal-length rows, so no padding interacts with the mask
        source, padding_mask = source[:, :5].clone(), None
    gen = torch.Generator().manual_seed(3)
    length = ckpt.model.local_features(source).tokens.shape[1]
    mask = torch.stack([torch.randperm(length, generator=gen) < length // 2 for _ in range(source.shape[0])])
    ref = fairseq_oracle.forward(
        kind, fairseq_files[kind], source, precomputed_mask=mask, dict_path=fairseq_files["bpe"] / "dict.txt"
    )
    with torch.no_grad():
        out = ckpt.model.encode(source, mask=mask, mask_mode="remove")
    extra = ckpt.model.num_extra_tokens
    order = torch.from_numpy(ref["ids_keep"]).argsort(dim=1) + extra  # fairseq's kept order -> ascending
    order = torch.cat([torch.arange(extra).expand(len(order), extra), order], dim=1)
    worst = 0.0
    for i, layer in enumerate(out.layers):
        for name, ours in (("block", layer.block), ("ffn", layer.ffn)):
            theirs = torch.from_numpy(ref[f"{name}_{i}"])
            theirs = torch.gather(theirs, 1, order[..., None].expand_as(theirs))
            worst = max(worst, (ours - theirs).abs().max().item())
    assert worst <= TOL


@pytest.mark.slow
def test_teacher_differs_and_provenance_is_recorded(fairseq_files):
    student = load_checkpoint(_convert(fairseq_files, "image_v2"))
    teacher = load_checkpoint(_convert(fairseq_files, "image_v2", teacher=True))
    sha = hashlib.sha256(fairseq_files["image_v2"].read_bytes()).hexdigest()
    for ckpt, which in ((student, "student"), (teacher, "teacher")):
        assert ckpt.source["sha256"] == sha and ckpt.source["weights"] == which and ckpt.source["has_teacher"]
        assert ckpt.source["type"] == "fairseq" and ckpt.source["fairseq_model"] == "data2vec_multi"
    assert "modality_encoders.IMAGE.decoder" in student.source["dropped"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        diff = (student.model.encode(x).last_hidden - teacher.model.encode(x).last_hidden).abs().max()
    assert diff > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{"cfg_format": "container"}, {"legacy": True}], ids=["container-cfg", "legacy"])
def test_other_checkpoint_layouts_convert_the_same(fairseq_oracle, fairseq_files, variant):
    """fairseq 0.12's trainer stores cfg as plain containers; old torch wrote the legacy (non-zip) format."""
    path = fairseq_files["audio_v1"].parent / f"audio_v1-{'-'.join(variant)}.pt"
    fairseq_oracle.build_checkpoint("audio_v1", path, **variant)
    reference = load_checkpoint(_convert(fairseq_files, "audio_v1")).model.state_dict()
    converted = load_checkpoint(convert_fairseq(path, path.with_suffix(""))).model.state_dict()
    assert all(torch.equal(reference[k], converted[k]) for k in reference)


# ---------------------------------------------------------------------------------- refusals (no fairseq)
def _fake(tmp_path, model_cfg: dict, state: dict | None = None, name: str = "fake.pt"):
    path = tmp_path / name
    torch.save({"cfg": {"model": model_cfg, "task": {}}, "model": state or {}}, path)
    return path


@pytest.mark.parametrize(
    ("cfg", "state", "message"),
    [
        ({"_name": "wav2vec2"}, {}, "not supported"),
        ({"_name": "data2vec_audio", "activation_fn": "relu"}, {}, "activation_fn"),
        ({"_name": "data2vec_audio", "pos_conv_depth": 1}, {}, "pos_conv_depth"),
        ({"_name": "data2vec_multi", "layer_norm_first": True}, {"modality_encoders.AUDIO.x": torch.ones(1)}, "pre-LN"),
        (
            {"_name": "data2vec_multi", "modalities": {"audio": {"use_alibi_encoder": True, "learned_alibi": True}}},
            {"modality_encoders.AUDIO.x": torch.ones(1)},
            "learned ALiBi",
        ),
        (
            {"_name": "data2vec_multi", "modalities": {"image": {"use_alibi_encoder": True}}},
            {"modality_encoders.IMAGE.x": torch.ones(1)},
            "2-D ALiBi",
        ),
        ({"_name": "data2vec_multi"}, {}, "one modality encoder"),
    ],
)
def test_unsupported_configurations_are_refused(tmp_path, cfg, state, message):
    with pytest.raises(ConfigError, match=message):
        convert_fairseq(_fake(tmp_path, cfg, state), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_teacher_needs_an_ema(tmp_path):
    path = _fake(tmp_path, {"_name": "data2vec_audio"}, {"mask_emb": torch.ones(2)})
    with pytest.raises(ConfigError, match="no EMA teacher"):
        convert_fairseq(path, tmp_path / "out", teacher=True)


@pytest.mark.slow
def test_text_needs_its_dictionary(fairseq_files, tmp_path):
    with pytest.raises(NotFound, match="dict.txt"):
        convert_fairseq(fairseq_files["text_v2"], tmp_path / "out", dict_dir=tmp_path)
    other = tmp_path / "bpe"
    other.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        (other / name).write_bytes((fairseq_files["bpe"] / name).read_bytes())
    (other / "dict.txt").write_text("5 1\n")  # a dictionary of another size than the checkpoint's
    with pytest.raises(ConfigError, match="symbols"):
        convert_fairseq(fairseq_files["text_v2"], tmp_path / "out", dict_dir=other)


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    assert d2v_main(["convert", "fairseq", str(_fake(tmp_path, {"_name": "x"})), str(tmp_path / "out")]) != 0
    assert "overwrite" in capsys.readouterr().err
