"""fairseq's text pipeline (GPT-2 BPE + dict.txt) as one tokenizer.json: the same ids as fairseq's own encode
(``<s> ... </s>``, specials included) on a varied set, through the project's TextPreprocessor."""

from __future__ import annotations

import pytest

from d2v.core.errors import ConfigError, NotFound
from d2v.models.convert.fairseq.text_tokenizer import build_tokenizer, read_dictionary
from d2v.models.preprocessing import TextPreprocessingConfig, TextPreprocessor

TEXTS = [
    "the quick brown fox",
    "Hello, World! It's 3.14 — isn't it?",
    "héllo wörld, café naïve façade déjà vu",
    "Ünïcödé ÀÉÎÕÜ ñ ß ø å",
    "日本語のテキストと中文的句子",
    "emoji 🎉🚀👍🏽 and symbols ©®™",
    "  leading and trailing spaces  ",
    "runs    of     spaces\tand\ttabs",
    "line one\nline two\n\n\nline five\r\n",
    "",
    "   ",
    "\n",
    "<mask> typed by a user, and </s> and <s> too",
    "data2vec learns contextualized targets for speech, vision and language " * 3,
    "x" * 300,
]


def test_dictionary_layout(tmp_path):
    (tmp_path / "dict.txt").write_text("10 5\n7 3\nfoo 1 #fairseq:overwrite\n\n")
    symbols, index = read_dictionary(tmp_path / "dict.txt")
    assert symbols == ["<s>", "<pad>", "</s>", "<unk>", "10", "7", "foo", "<mask>"]
    assert index["<mask>"] == 7 and index["10"] == 4
    (tmp_path / "dict.txt").write_text("10 5\n10 3\n")
    with pytest.raises(ConfigError, match="duplicate"):
        read_dictionary(tmp_path / "dict.txt")
    (tmp_path / "dict.txt").write_text("no-count-here\n")
    with pytest.raises(ConfigError, match="expected"):
        read_dictionary(tmp_path / "dict.txt")
    with pytest.raises(NotFound):
        build_tokenizer(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.parametrize("drop", [0, 5])
def test_ids_match_fairseq_encode(fairseq_oracle, tmp_path, drop):
    folder = fairseq_oracle.write_gpt2_files(tmp_path / "bpe", drop=drop)
    tokenizer, vocab = build_tokenizer(folder)
    assert len(vocab.missing) == drop
    tokenizer.save(str(folder / "tokenizer.json"))
    expected = fairseq_oracle.encode_text(TEXTS, folder)
    pre = TextPreprocessor(TextPreprocessingConfig(max_length=512), folder)
    unk_hits = 0
    for text, want in zip(TEXTS, expected, strict=True):
        got = pre.load_item(text)
        assert len(got) == len(want), text
        for ours, theirs in zip(got, want, strict=True):
            if ours >= vocab.size:  # a GPT-2 token dict.txt lacks: fairseq says <unk>, ours has <unk>'s vector
                assert theirs == 3, text
                unk_hits += 1
            else:
                assert ours == theirs, (text, got, want)
    assert (unk_hits > 0) == (drop > 0)
    assert expected[TEXTS.index("")] == [0, 2]
    assert pre.load_item("<mask>") != [0, vocab.mask_id, 2]  # typed specials are plain text, as in fairseq


@pytest.mark.slow
def test_truncation_keeps_fairseq_prefix(fairseq_oracle, tmp_path):
    folder = fairseq_oracle.write_gpt2_files(tmp_path / "bpe")
    build_tokenizer(folder)[0].save(str(folder / "tokenizer.json"))
    long_text = TEXTS[-2]
    want = fairseq_oracle.encode_text([long_text], folder)[0]
    pre = TextPreprocessor(TextPreprocessingConfig(max_length=16), folder)
    got = pre.load_item(long_text)
    assert len(want) > 16 and got == [*want[:15], 2]
