"""fairseq's text pipeline as ONE ``tokenizers`` tokenizer: GPT-2 byte-level BPE (``encoder.json`` +
``vocab.bpe``) whose ids go through the fairseq dictionary (``dict.txt``). Torch-free.

fairseq encodes a sentence as ``"<s> " + gpt2_bpe(sentence) + " </s>"``, where ``gpt2_bpe`` yields GPT-2 ids
written as decimal strings, then ``Dictionary.encode_line`` maps each string to its dictionary index
(``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, then ``dict.txt`` in file order, then the ``<mask>`` the
masked-LM task appends). The tokenizer built here has the same merges with every GPT-2 token string renamed
to its dictionary index, so it yields fairseq's ids directly. A GPT-2 token that ``dict.txt`` lacks is
``<unk>`` in fairseq; BPE needs a distinct id for every token it can produce, so such tokens get ids past the
dictionary (``missing``) and the converter gives those rows the ``<unk>`` embedding: the same vectors, ids
that differ from fairseq's only where fairseq says ``<unk>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from d2v.core.errors import ConfigError, NotFound

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq Dictionary's first four symbols, in id order
MASK = "<mask>"


@dataclass
class FairseqTextVocab:
    """The dictionary in id order and what building the tokenizer found."""

    symbols: list[str]
    mask_id: int
    missing: list[str] = field(default_factory=list)  # GPT-2 tokens absent from dict.txt (ids >= len(symbols))

    @property
    def size(self) -> int:
        return len(self.symbols)


def read_dictionary(path: Path) -> tuple[list[str], dict[str, int]]:
    """fairseq ``Dictionary.load``: specials, then ``symbol count [#fairseq:overwrite]`` lines, then
    ``<mask>`` (the masked-LM task adds it unless present). Returns symbols in id order and the index map
    (with ``#fairseq:overwrite`` a symbol maps to its last index, as in fairseq)."""
    if not path.is_file():
        raise NotFound(f"fairseq dictionary not found: {path}")
    symbols, index = list(SPECIALS), {s: i for i, s in enumerate(SPECIALS)}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.rstrip()
        if not line:
            continue
        overwrite = line.endswith(" #fairseq:overwrite")
        if overwrite:
            line = line[: -len(" #fairseq:overwrite")]
        word, _, count = line.rpartition(" ")
        if not word or not count.lstrip("-").isdigit():
            raise ConfigError(f"{path}:{number}: expected '<symbol> <count>', got {raw!r}")
        if word in index and not overwrite:
            raise ConfigError(f"{path}:{number}: duplicate symbol {word!r} (fairseq refuses it too)")
        index[word] = len(symbols)
        symbols.append(word)
    if MASK not in index:
        index[MASK] = len(symbols)
        symbols.append(MASK)
    return symbols, index


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """``vocab.bpe``: a version line, then one ``a b`` merge per line (fairseq skips the first line)."""
    if not path.is_file():
        raise NotFound(f"GPT-2 BPE merges not found: {path}")
    merges = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n")[1:], start=2):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{path}:{number}: expected a merge 'a b', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _read_encoder(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise NotFound(f"GPT-2 BPE vocabulary not found: {path}")
    try:
        encoder = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise ConfigError(f"{path}: expected a JSON object of token -> GPT-2 id")
    return encoder


def build_tokenizer(dict_dir: Path) -> tuple[Tokenizer, FairseqTextVocab]:
    """The tokenizer for ``dict_dir`` holding ``dict.txt``, ``encoder.json`` and ``vocab.bpe``."""
    symbols, index = read_dictionary(dict_dir / "dict.txt")
    encoder = _read_encoder(dict_dir / "encoder.json")
    merges = _read_merges(dict_dir / "vocab.bpe")
    vocab: dict[str, int] = {}
    missing: list[str] = []
    for token, gpt2_id in sorted(encoder.items(), key=lambda item: item[1]):
        dict_id = index.get(str(gpt2_id))
        if dict_id is None:
            dict_id = len(symbols) + len(missing)
            missing.append(token)
        vocab[token] = dict_id
    for s in (*SPECIALS, MASK):  # in the model vocabulary, so the added special tokens reuse these ids
        vocab[s] = index[s]
    taken = set(vocab.values())
    for i, symbol in enumerate(symbols):  # dictionary entries no BPE token produces keep a name for decoding
        if i not in taken and symbol not in vocab and not symbol.isdigit():
            vocab[symbol] = i
    try:
        bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False)
    except Exception as exc:  # tokenizers reports a merge naming a token absent from the vocabulary
        raise ConfigError(f"{dict_dir}: encoder.json and vocab.bpe do not fit together: {exc}") from None
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in (*SPECIALS, MASK)])
    for s in (*SPECIALS, MASK):
        if tokenizer.token_to_id(s) != index[s]:
            raise ConfigError(f"{dict_dir}: {s} would get id {tokenizer.token_to_id(s)}, fairseq uses {index[s]}")
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", index["</s>"]), ("<s>", index["<s>"]))
    return tokenizer, FairseqTextVocab(symbols, index[MASK], missing)
