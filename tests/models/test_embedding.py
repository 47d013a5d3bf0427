import pytest
import torch
import torch.nn.functional as F

from d2v.core.errors import InvalidInput
from d2v.models.config import EmbeddingConfig
from d2v.models.embedding import extract_embeddings, layer_average
from d2v.models.targets import instance_norm


def test_layer_average_by_hand():
    # Three layers of constant-per-token values; norm "none" -> plain mean of the top two.
    layers = [torch.full((1, 2, 4), float(v)) for v in (1.0, 2.0, 6.0)]
    assert layer_average(layers, None, 2, "none").unique().tolist() == [4.0]
    assert layer_average(layers, None, 3, "none").unique().tolist() == [3.0]
    # Per-token layer norm happens before averaging.
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 5, 8, generator=g) * (i + 1) + i for i in range(4)]
    expected = (F.layer_norm(layers[2], (8,)) + F.layer_norm(layers[3], (8,))) / 2
    torch.testing.assert_close(layer_average(layers, None, 2), expected)
    with pytest.raises(InvalidInput):
        layer_average(layers, None, 5)


def test_dynamic_top_k_matches_static():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 5, 8, generator=g) for _ in range(4)]
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    for k in range(1, 5):
        for norm in ("layer", "instance"):
            static = layer_average(layers, padding, k, norm)
            dynamic = layer_average(layers, padding, torch.tensor([k]), norm)
            torch.testing.assert_close(static, dynamic, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer_average(layers, None, torch.tensor([9])), layer_average(layers, None, 4))


def test_instance_norm_excludes_padding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, generator=g)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    out = instance_norm(x, padding)
    # Row 1 equals F.instance_norm over its 4 real steps; padded steps are zero.
    reference = F.instance_norm(x[1:, :4].transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out[1, :4], reference[0], atol=1e-5, rtol=1e-5)
    assert out[1, 4:].abs().sum() == 0
    torch.testing.assert_close(out[0], F.instance_norm(x[:1].transpose(1, 2)).transpose(1, 2)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["layer", "target"])
def test_extract_embeddings_shapes(modality, norm, tiny_model, tiny_batch):
    model = tiny_model(modality)
    inputs, attention_mask = tiny_batch(modality)
    emb = extract_embeddings(model, inputs, attention_mask, EmbeddingConfig(top_k=2, norm=norm))
    B, T, D = emb.tokens.shape
    assert emb.token_mask.shape == (B, T) and emb.token_mask.dtype == torch.int64
    assert emb.mean.shape == (B, D) and emb.tokens.dtype == torch.float32
    assert (emb.tokens[emb.token_mask == 0] == 0).all()
    if modality == "image":
        assert T == 16 and emb.cls.shape == (B, D)  # patches only; CLS separately
    elif modality == "text":
        assert emb.token_mask.tolist()[2] == [1] * 4 + [0] * 7 and emb.cls.shape == (B, D)
    else:
        assert emb.cls is None


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_embeddings_ignore_padded_inputs(modality, tiny_model, tiny_batch):
    model = tiny_model(modality)
    inputs, attention_mask = tiny_batch(modality)
    changed = inputs.clone()
    changed[attention_mask == 0] = 3 if modality == "text" else -4.0
    cfg = EmbeddingConfig(top_k=3, norm="target")
    a = extract_embeddings(model, inputs, attention_mask, cfg)
    b = extract_embeddings(model, changed, attention_mask, cfg)
    torch.testing.assert_close(a.tokens, b.tokens)
    torch.testing.assert_close(a.mean, b.mean)


def test_pooled_vectors_are_informative_with_target_norm(tiny_model, tiny_batch):
    """Instance norm over time zeroes every channel's time-mean: pooling must use the layer-normed average."""
    model = tiny_model("audio")
    inputs, attention_mask = tiny_batch("audio")
    emb = extract_embeddings(model, inputs, attention_mask, EmbeddingConfig(top_k=2, norm="target"))
    real = emb.token_mask.unsqueeze(-1).float()
    mean_of_target_tokens = (emb.tokens * real).sum(1) / real.sum(1)
    assert mean_of_target_tokens.abs().max() < 1e-4  # the pitfall this guards against
    assert (emb.mean.norm(dim=-1) > 0.1).all()
    cos = F.cosine_similarity(emb.mean[:, None], emb.mean[None], dim=-1)
    assert (cos[~torch.eye(3, dtype=torch.bool)] < 0.999).all()


def test_extract_embeddings_exports_to_onnx(tmp_path, tiny_model, tiny_batch):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model("text")
    ids, attention_mask = tiny_batch("text")
    cfg = EmbeddingConfig(top_k=2)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, top_k):
            out = extract_embeddings(self.model, input_ids, attention_mask, cfg, top_k=top_k)
            return out.tokens, out.token_mask, out.mean, out.cls

    wrapper = Wrapper().eval()
    top_k = torch.tensor([3])
    path = tmp_path / "model.onnx"
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    torch.onnx.export(
        wrapper,
        (ids, attention_mask, top_k),
        str(path),
        input_names=["input_ids", "attention_mask", "d2v_top_k"],
        output_names=["d2v_token_embeddings", "d2v_token_mask", "d2v_mean_embedding", "d2v_cls_embedding"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}, "top_k": None},
        dynamo=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    short_ids, short_mask = ids[:2, :7], attention_mask[:2, :7]
    for k in (1, 4):
        feeds = {"input_ids": short_ids.numpy(), "attention_mask": short_mask.numpy(), "d2v_top_k": [k]}
        onnx_tokens, _, onnx_mean, _ = session.run(None, feeds)
        with torch.no_grad():
            expected = extract_embeddings(model, short_ids, short_mask, EmbeddingConfig(top_k=k))
        torch.testing.assert_close(torch.from_numpy(onnx_mean), expected.mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.from_numpy(onnx_tokens), expected.tokens, atol=1e-4, rtol=1e-4)
