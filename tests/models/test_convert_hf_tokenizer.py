"""HF text repos without tokenizer.json: ``vocab.json`` + ``merges.txt`` (+ tokenizer configs) -> the converted
checkpoint's tokenizer gives transformers' ids, through the project's real preprocessing path.

The vocabulary is a byte-level BPE trained here on varied text and written the way RoBERTa-family repos ship
it (``<s> <pad> </s> <unk>`` at ids 0-3, ``<mask>`` last, ``merges.txt`` with its ``#version`` line). Oracles:

* ``RobertaTokenizerFast`` loaded by transformers from the same files;
* the slow RoBERTa tokenizer: transformers >= 5 has none (``RobertaTokenizer`` is now the fast one), so
  ``SlowRobertaTokenizer`` rebuilds 4.x's from transformers' own slow machinery: ``PreTrainedTokenizer``
  (added-token splitting and strip flags, special-token placement, truncation) with the pure-Python
  byte-level BPE (GPT-2 regex, ``bytes_to_unicode``, ranked merges) of ``ClvpTokenizer``, plus RoBERTa's
  ``prepare_for_tokenization`` and ``<mask>`` as ``AddedToken(lstrip=True)``, as 4.x defined them.

The server's path encodes typed special strings as text (``encode_special_tokens``); transformers does the
same with ``split_special_tokens=True``, so that is what the served ids are compared with. The saved
``tokenizer.json`` itself is compared with transformers' default (``<mask>`` recognised, its lstrip).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AddedToken, ClvpTokenizer, RobertaTokenizerFast  # noqa: E402

from d2v.cli import main  # noqa: E402
from d2v.core.errors import ConfigError, NotFound  # noqa: E402
from d2v.models.checkpoint import load_checkpoint  # noqa: E402
from d2v.models.convert.hf import convert_hf  # noqa: E402
from d2v.models.preprocessing import build_preprocessor  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Don't you think it's lovely? We'll see, they've said.",
    "data2vec learns contextualised representations of speech, images and text with one objective.",
    "Prices rose 3.5% in 2023; the index closed at 12,345.67 points (up 89).",
    "def mean(xs):\n    return sum(xs) / len(xs)  # average\n",
    "Café, naïve, résumé, Zürich, São Paulo, Kraków, Ångström, façade, jalapeño.",
    "東京は日本の首都です。北京欢迎你。서울은 한국의 수도입니다。",
    "Emoji too: 🙂 🚀 👍🏽 👨‍👩‍👧 🇫🇷 and ♥ ★ → ∑ ∞.",
    "Whitespace   runs\t\ttabs\n\nnew paragraphs\r\n and trailing spaces   ",
    "URLs like https://example.com/path?q=1&r=two#frag and e-mail a.b@c.org.",
    "ALL CAPS, MiXeD cAsE, and lower case words in a sentence of English prose.",
]
TEXTS = [
    "Hello world! The quick brown fox.",
    "café naïve résumé Zürich",
    "cafe\u0301 with a combining accent",
    "東京は日本の首都です。北京欢迎你 안녕하세요",
    "emoji 🙂🚀 👍🏽 👨‍👩‍👧 🇫🇷",
    "  leading and trailing spaces  ",
    " one leading space",
    "tabs\tand\nnewlines\n\n\nand   runs     of spaces",
    "\n\nstarts with newlines",
    "",
    "   ",
    "\n\t \n",
    "a <mask> b",
    "<mask>",
    "fill the<mask>in, then <mask>.",
    "</s> and <s> and <pad> typed by a user",
    "numbers 1234567 3.14159 and code: def f(x): return x**2",
    "don't I'll we've they're",
    "non\u00a0breaking\u2003em space and zero\u200bwidth",
]
LONG = " ".join(CORPUS * 8)  # well past 512 tokens


class SlowRobertaTokenizer(ClvpTokenizer):
    """transformers 4.x's slow ``RobertaTokenizer`` on transformers' own slow machinery (module docstring)."""

    def __init__(self, vocab_file, merges_file, add_prefix_space=False):
        names = {"bos": "<s>", "eos": "</s>", "sep": "</s>", "cls": "<s>", "unk": "<unk>", "pad": "<pad>"}
        mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
        specials = {f"{role}_token": AddedToken(text, special=True) for role, text in names.items()}
        super().__init__(vocab_file, merges_file, add_prefix_space=add_prefix_space, mask_token=mask, **specials)
        self.special_tokens_pattern = "cls_sep"  # <s> X </s>
        # <mask> is in vocab.json, so transformers 5 registered it before seeing the AddedToken: restore 4.x's.
        self._added_tokens_decoder[self.mask_token_id] = mask
        self._update_trie()

    @property
    def normalizer(self):  # CLVP normalises English numbers; RoBERTa does not
        return lambda text: text

    def prepare_for_tokenization(self, text, is_split_into_words=False, **kwargs):
        add_prefix_space = kwargs.pop("add_prefix_space", self.add_prefix_space)
        if (is_split_into_words or add_prefix_space) and (len(text) > 0 and not text[0].isspace()):
            text = " " + text
        return text, kwargs


def _train_vocab(vocab_size: int = 700) -> tuple[dict[str, int], list[str]]:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = dict(model["vocab"])
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    vocab["<mask>"] = len(vocab)  # RoBERTa: the mask is the last id
    return vocab, merges


def _write_repo(path, vocab, merges, *, tokenizer_config=None, special_tokens_map=None, vocab_size=None):
    """A data2vec-text repo as shipped: config.json + weights + vocab.json + merges.txt (no tokenizer.json)."""
    from transformers import Data2VecTextConfig, Data2VecTextModel

    torch.manual_seed(0)
    cfg = Data2VecTextConfig(
        vocab_size=vocab_size or len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    )
    Data2VecTextModel(cfg).save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    for name, content in (("tokenizer_config.json", tokenizer_config), ("special_tokens_map.json", special_tokens_map)):
        if content is not None:
            (path / name).write_text(json.dumps(content))
    return path


MASK_AS_SHIPPED = {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False, "single_word": False}
VARIANTS = {
    # The layout of the issue: vocab.json + merges.txt and nothing else about the tokenizer.
    "bare": {},
    # What transformers 4.x save_pretrained writes next to them (model_max_length small: truncation shows).
    "configs": {
        "tokenizer_config": {"tokenizer_class": "RobertaTokenizer", "model_max_length": 24, "add_prefix_space": False},
        "special_tokens_map": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "cls_token": "<s>",
            "mask_token": MASK_AS_SHIPPED,
        },
    },
    "prefix_space": {"tokenizer_config": {"add_prefix_space": True, "model_max_length": 512}},
}


@pytest.fixture(scope="module")
def vocab_merges():
    return _train_vocab()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def converted(request, vocab_merges, tmp_path_factory):
    """(variant, repo dir, checkpoint dir, served preprocessor, fast oracle, slow oracle)."""
    root = tmp_path_factory.mktemp(f"tok-{request.param}")
    spec = VARIANTS[request.param]
    repo = _write_repo(root / "hf", *vocab_merges, **spec)
    assert not (repo / "tokenizer.json").exists()
    result = convert_hf(repo, root / "ckpt")
    assert result.tokenizer.startswith("vocab.json + merges.txt")
    ckpt = load_checkpoint(root / "ckpt")
    assert (root / "ckpt" / "tokenizer.json").is_file()
    pre = build_preprocessor(ckpt.preprocessing, ckpt.path)  # what the server builds from the checkpoint
    add_prefix_space = spec.get("tokenizer_config", {}).get("add_prefix_space", False)
    # transformers 5 no longer gives <mask> lstrip by default; 4.x (and files saved by it) did: pass it along.
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    fast = RobertaTokenizerFast.from_pretrained(
        str(repo), **({} if "special_tokens_map" in spec else {"mask_token": mask})
    )
    slow = SlowRobertaTokenizer(str(repo / "vocab.json"), str(repo / "merges.txt"), add_prefix_space=add_prefix_space)
    return request.param, repo, root / "ckpt", pre, fast, slow


def _slow_differs_from_fast(slow, text: str, *, specials_split: bool = True) -> bool:
    """transformers' own slow/fast splits, both only with add_prefix_space: the slow tokenizer adds no space
    before text that starts with any whitespace, the fast one (ByteLevel) before any not starting with ' ';
    and the fast one adds it to every piece between recognised special tokens, the slow one only at the start."""
    if not slow.add_prefix_space:
        return False
    starts_with_other_space = text[:1].isspace() and text[:1] != " "
    return starts_with_other_space or (not specials_split and any(t in text for t in slow.all_special_tokens))


def test_served_ids_equal_transformers(converted):
    variant, _, _, pre, fast, slow = converted
    limit = pre.max_length
    assert limit == {"bare": 512, "configs": 24, "prefix_space": 512}[variant]
    for text in [*TEXTS, LONG]:
        ours = pre.load_item(text)
        kwargs = {"split_special_tokens": True, "truncation": True, "max_length": limit}
        assert ours == fast(text, **kwargs)["input_ids"], f"fast, {variant}: {text[:40]!r}"
        if not _slow_differs_from_fast(slow, text):
            assert ours == slow(text, **kwargs)["input_ids"], f"slow, {variant}: {text[:40]!r}"
    assert len(pre.load_item(LONG)) == limit and pre.count_tokens(LONG) > limit


def test_served_batch_equals_transformers_padding(converted):
    _, _, _, pre, fast, _ = converted
    texts = [TEXTS[0], TEXTS[4], "", LONG]
    batch = pre(texts)
    theirs = fast(texts, split_special_tokens=True, truncation=True, max_length=pre.max_length, padding=True)
    assert batch["input_ids"].tolist() == theirs["input_ids"]
    assert batch["attention_mask"].tolist() == theirs["attention_mask"]


def test_saved_tokenizer_json_equals_transformers_default(converted):
    """The file itself behaves like transformers' tokenizer: ``<mask>`` recognised and stripping its space."""
    variant, _, ckpt, _, fast, slow = converted
    tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    for text in [*TEXTS, LONG]:
        ours = tokenizer.encode(text).ids
        assert ours == fast(text)["input_ids"], f"fast, {variant}: {text[:40]!r}"
        if not _slow_differs_from_fast(slow, text, specials_split=False):
            assert ours == slow(text)["input_ids"], f"slow, {variant}: {text[:40]!r}"
    mask_id = fast.mask_token_id
    assert mask_id == len(fast) - 1
    with_mask, without = tokenizer.encode("a <mask>").ids, tokenizer.encode("a").ids
    assert with_mask == [*without[:-1], mask_id, without[-1]]  # the space before <mask> went into it
    ids = tokenizer.encode(TEXTS[4]).ids
    assert tokenizer.decode(ids) == fast.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert tokenizer.decode(ids).strip() == TEXTS[4]


def test_tokenizer_json_in_repo_is_used_as_is(vocab_merges, tmp_path):
    """A repo that ships tokenizer.json (e.g. one saved by transformers) keeps exactly that tokenizer."""
    repo = _write_repo(tmp_path / "hf", *vocab_merges)
    fast = RobertaTokenizerFast.from_pretrained(str(repo))
    fast.save_pretrained(str(repo))  # writes tokenizer.json (+ configs)
    result = convert_hf(repo, tmp_path / "ckpt")
    assert result.tokenizer == "tokenizer.json"
    saved = tmp_path / "ckpt" / "tokenizer.json"
    assert saved.read_bytes() == (repo / "tokenizer.json").read_bytes()
    assert Tokenizer.from_file(str(saved)).encode(LONG).ids == fast(LONG)["input_ids"]


def test_cli_reports_the_tokenizer(vocab_merges, tmp_path, capsys):
    repo = _write_repo(tmp_path / "hf", *vocab_merges)
    assert main(["convert", "hf", str(repo), str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "tokenizer: vocab.json + merges.txt -> tokenizer.json" in out
    assert load_checkpoint(tmp_path / "ckpt").source["tokenizer"] == "vocab.json + merges.txt"


def test_bad_tokenizer_files_are_refused(vocab_merges, tmp_path):
    vocab, merges = vocab_merges
    repo = _write_repo(tmp_path / "hf", vocab, merges)
    (repo / "merges.txt").unlink()
    with pytest.raises(NotFound, match="no merges.txt"):
        convert_hf(repo, tmp_path / "a")
    (repo / "merges.txt").write_text("#version: 0.2\nnot-a-pair\n")
    with pytest.raises(ConfigError, match="cannot build a BPE tokenizer"):
        convert_hf(repo, tmp_path / "b")
    (repo / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (repo / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ConfigError, match="BertTokenizer"):
        convert_hf(repo, tmp_path / "c")
    # More tokens than the model's embedding rows: refused at conversion, not as an index error when serving.
    small = _write_repo(tmp_path / "small", vocab, merges, vocab_size=len(vocab) - 1)
    with pytest.raises(ConfigError, match="embedding only"):
        convert_hf(small, tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_added_tokens_and_lowercasing_from_tokenizer_config(vocab_merges, tmp_path):
    """``added_tokens_decoder`` (4.x's tokenizer_config.json) adds a numbered token; ``do_lower_case`` lowercases."""
    vocab, merges = vocab_merges
    new_id = len(vocab)
    plain = {**MASK_AS_SHIPPED, "lstrip": False, "special": True}
    decoder = {str(vocab[t]): {**plain, "content": t} for t in ("<s>", "<pad>", "</s>", "<unk>")}
    decoder[str(vocab["<mask>"])] = {**MASK_AS_SHIPPED, "special": True}  # as transformers 4.x writes them
    decoder[str(new_id)] = {**plain, "content": "<new>"}
    config = {"tokenizer_class": "RobertaTokenizer", "added_tokens_decoder": decoder}
    repo = _write_repo(tmp_path / "hf", vocab, merges, tokenizer_config=config, vocab_size=new_id + 1)
    convert_hf(repo, tmp_path / "ckpt")
    saved = Tokenizer.from_file(str(tmp_path / "ckpt" / "tokenizer.json"))
    fast = RobertaTokenizerFast.from_pretrained(str(repo))
    assert fast.convert_tokens_to_ids("<new>") == saved.token_to_id("<new>") == new_id
    for text in ("x <new> y", "a <mask> b <new>", TEXTS[7]):
        assert saved.encode(text).ids == fast(text)["input_ids"]

    (repo / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": True}))
    result = convert_hf(repo, tmp_path / "lower")
    assert any("lowercased" in note for note in result.notes)
    pre = build_preprocessor(load_checkpoint(tmp_path / "lower").preprocessing, tmp_path / "lower")
    assert pre.load_item("The QUICK Brown FOX") == fast("the quick brown fox")["input_ids"]

    (repo / "tokenizer_config.json").write_text(json.dumps(config))
    (repo / "added_tokens.json").write_text(json.dumps({"<mask>": new_id + 5}))
    with pytest.raises(ConfigError, match="declared with id"):
        convert_hf(repo, tmp_path / "wrong")
