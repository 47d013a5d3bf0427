import pytest
import torch

from d2v.models.transformer import Transformer, TransformerOutput, alibi_slopes

DIMS = dict(dim=32, depth=3, num_heads=4, ffn_dim=64)


def _padded(batch=2, tokens=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, 32, generator=g)
    padding = torch.zeros(batch, tokens, dtype=torch.bool)
    padding[-1, 4:] = True
    return x, padding


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_outputs_per_layer(layer_norm_first):
    torch.manual_seed(0)
    model = Transformer(**DIMS, layer_norm_first=layer_norm_first, final_norm=layer_norm_first).eval()
    x, padding = _padded()
    out = model(x, padding)
    assert isinstance(out, TransformerOutput) and len(out.layers) == 3
    for layer in out.layers:
        assert layer.block.shape == layer.ffn.shape == x.shape
        assert not torch.allclose(layer.block, layer.ffn)
    if not layer_norm_first:
        assert torch.equal(out.last_hidden, out.layers[-1].block)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"alibi": True},
        {"rel_pos_bias": "shared", "rel_pos_grid": (2, 3), "layer_norm_first": True, "k_bias": False},
        {"layer_scale_init": 0.1, "layer_norm_first": True},
    ],
)
def test_sdpa_matches_math(options):
    torch.manual_seed(0)
    sdpa = Transformer(**DIMS, **options, attn_impl="sdpa").eval()
    math_ = Transformer(**DIMS, **options, attn_impl="math").eval()
    math_.load_state_dict(sdpa.state_dict())
    if sdpa.rel_pos_bias is not None:
        with torch.no_grad():
            sdpa.rel_pos_bias.table.normal_()
            math_.rel_pos_bias.table.copy_(sdpa.rel_pos_bias.table)
    x, padding = _padded()
    a, b = sdpa(x, padding), math_(x, padding)
    real = ~padding
    for la, lb in zip(a.layers, b.layers, strict=True):
        torch.testing.assert_close(la.block[real], lb.block[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(la.ffn[real], lb.ffn[real], atol=1e-5, rtol=1e-5)


def test_padded_keys_are_ignored():
    torch.manual_seed(0)
    model = Transformer(**DIMS, alibi=True).eval()
    x, padding = _padded()
    changed = x.clone()
    changed[padding] = 100.0
    real = ~padding
    torch.testing.assert_close(model(x, padding).last_hidden[real], model(changed, padding).last_hidden[real])
    # A padded row equals the same row run alone without padding.
    alone = model(x[1:2, :4]).last_hidden
    torch.testing.assert_close(model(x, padding).last_hidden[1, :4], alone[0], atol=1e-5, rtol=1e-5)


def test_alibi_uses_original_positions():
    torch.manual_seed(0)
    model = Transformer(**DIMS, alibi=True).eval()
    x, _ = _padded(batch=1)
    gaps = torch.tensor([[0, 2, 3, 7, 9, 10, 12]])
    assert not torch.allclose(model(x).last_hidden, model(x, positions=gaps).last_hidden)
    assert alibi_slopes(8) == [2 ** -(i + 1) for i in range(8)]
    assert len(alibi_slopes(12)) == 12


def test_layerdrop_and_drop_path_only_in_training():
    torch.manual_seed(0)
    model = Transformer(**DIMS, layerdrop=1.0, drop_path=0.5, dropout=0.1)
    x, padding = _padded()
    model.train()
    out = model(x, padding)
    assert torch.equal(out.last_hidden, x)  # every block dropped
    assert len(out.layers) == 3 and all(torch.equal(layer.ffn, torch.zeros_like(x)) for layer in out.layers)
    model.eval()
    first, second = model(x, padding), model(x, padding)
    assert torch.equal(first.last_hidden, second.last_hidden) and not torch.equal(first.last_hidden, x)


def test_shared_relative_position_bias_layout():
    model = Transformer(**DIMS, rel_pos_bias="shared", rel_pos_grid=(2, 2))
    bias = model.rel_pos_bias
    assert bias.table.shape == (3 * 3 + 3, 4)
    index = bias.index
    assert index.shape == (5, 5)
    assert index[0, 0] == 11 and index[0, 1] == 9 and index[1, 0] == 10  # cls-cls, cls->patch, patch->cls
    assert index[1, 1] == index[2, 2] == index[4, 4] == 4  # zero offset is the table centre
    assert bias().shape == (1, 4, 5, 5)
