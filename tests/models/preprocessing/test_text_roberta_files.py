"""``build_roberta_tokenizer``: the RoBERTa byte-level BPE from ``vocab.json`` + ``merges.txt`` (torch-free).

Parity with transformers on a trained vocabulary is in tests/models/test_convert_hf_tokenizer.py; these are
the builder's own contracts on a hand-written one."""

from __future__ import annotations

import json

import pytest
from tokenizers import AddedToken, pre_tokenizers

from d2v.core.errors import ConfigError
from d2v.models.preprocessing import TextPreprocessingConfig, TextPreprocessor
from d2v.models.preprocessing.text import build_roberta_tokenizer, roberta_special_tokens

MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "l l", "e ll", "h ell"]


@pytest.fixture
def files(tmp_path):
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    for merge in MERGES:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<mask>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return tmp_path / "vocab.json", tmp_path / "merges.txt", vocab


def test_roberta_layout(files):
    vocab_file, merges_file, vocab = files
    tokenizer = build_roberta_tokenizer(vocab_file, merges_file)
    assert [tokenizer.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert tokenizer.token_to_id("<mask>") == len(vocab) - 1
    assert tokenizer.get_vocab_size(with_added_tokens=True) == len(vocab)
    data = json.loads(tokenizer.to_str())
    assert data["post_processor"]["type"] == "RobertaProcessing"
    assert data["model"]["unk_token"] is None and data["model"]["fuse_unk"] is False
    encoding = tokenizer.encode(" the hell")
    # merges by rank: "h e" before "e ll", so "hell" never forms although "h ell" is a merge
    assert encoding.tokens == ["<s>", "Ġthe", "Ġ", "he", "ll", "</s>"]
    assert tokenizer.decode(encoding.ids) == " the hell"


def test_mask_takes_the_space_before_it(files):
    mask, a, space = files[2]["<mask>"], files[2]["a"], files[2]["Ġ"]
    tokenizer = build_roberta_tokenizer(*files[:2])
    assert tokenizer.encode("a <mask>").ids == [0, a, mask, 2]
    plain = {"mask": AddedToken("<mask>", lstrip=False, normalized=False, special=True)}
    tokenizer = build_roberta_tokenizer(*files[:2], special_tokens=roberta_special_tokens(**plain))
    assert tokenizer.encode("a <mask>").ids == [0, a, space, mask, 2]


def test_served_preprocessor_accepts_it_and_reads_specials_as_text(files):
    pre = TextPreprocessor(TextPreprocessingConfig(max_length=8), tokenizer=build_roberta_tokenizer(*files[:2]))
    assert pre.load_item("") == [0, 2]
    ids = pre.load_item("<mask> the")
    assert ids[0] == 0 and ids[-1] == 2 and files[2]["<mask>"] not in ids


def test_options(files):
    vocab_file, merges_file, vocab = files
    prefixed = build_roberta_tokenizer(vocab_file, merges_file, add_prefix_space=True)
    assert prefixed.encode("the").tokens == ["<s>", "Ġthe", "</s>"]
    lowered = build_roberta_tokenizer(vocab_file, merges_file, lowercase=True)
    assert lowered.encode(" THE <mask>").ids == [0, vocab["Ġthe"], vocab["<mask>"], 2]
    extra = build_roberta_tokenizer(vocab_file, merges_file, added_tokens=[AddedToken("<extra>", special=True)])
    assert extra.token_to_id("<extra>") == len(vocab)


def test_special_roles():
    roles = roberta_special_tokens(bos="<cls>")
    assert roles["cls"].content == "<cls>" and roles["sep"].content == "</s>"
    assert roles["mask"].lstrip and not roles["eos"].lstrip and not roles["pad"].normalized
    with pytest.raises(ConfigError, match="unknown special-token roles"):
        roberta_special_tokens(separator="</s>")


def test_bad_files(files, tmp_path):
    vocab_file, _, _ = files
    (tmp_path / "bad.txt").write_text("#version: 0.2\nthree part merge\n")
    with pytest.raises(ConfigError, match="cannot build a BPE tokenizer"):
        build_roberta_tokenizer(vocab_file, tmp_path / "bad.txt")
    with pytest.raises(ConfigError, match="cannot build a BPE tokenizer"):
        build_roberta_tokenizer(tmp_path / "missing.json", tmp_path / "bad.txt")
