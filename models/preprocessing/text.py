"""Text preprocessing: RoBERTa-style byte-level BPE token ids ``<s> ... </s>``, right-padded with ``pad_id``.

The dictionary layout is fairseq/RoBERTa's: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4
(data2vec text, spec §3.3). The tokenizer itself is a Hugging Face ``tokenizers`` ``tokenizer.json`` that
travels with the checkpoint / export (``TextPreprocessingConfig.tokenizer_file``, relative to its directory):
trained here (:func:`train_bpe_tokenizer`) or built from a RoBERTa-family ``vocab.json`` + ``merges.txt``
(:func:`build_roberta_tokenizer`, what ``d2v convert hf`` does for repos without ``tokenizer.json``).

Special-token strings typed by a user (``"<mask>"``, ``"</s>"``) are tokenized as plain text, never as the
special tokens themselves (``Tokenizer.encode_special_tokens = True``): only this module places specials.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from d2v.core.errors import ConfigError, InvalidInput, NotFound, PayloadTooLarge

from .base import PreprocessorBase, check_batch
from .config import TextPreprocessingConfig

BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, MASK_TOKEN = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
# fairseq / RoBERTa dictionary order: the ids are part of the model contract (pad_id=1).
SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, MASK_TOKEN)
BYTE_ALPHABET_SIZE = 256


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    path: str | Path | None = None,
    *,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a RoBERTa-style byte-level BPE tokenizer on ``texts`` and save it as ``tokenizer.json``.

    Special tokens ``<s> <pad> </s> <unk> <mask>`` get ids 0..4 (fairseq order, pad=1); the post-processor
    wraps every encoding as ``<s> ... </s>``. ``vocab_size`` counts the specials and the 256 byte symbols, so
    it must be at least 261. ``path`` (a file, parents created) is optional; the tokenizer is returned.
    """
    minimum = len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE
    if vocab_size < minimum:
        raise ConfigError(f"vocab_size must be >= {minimum} (5 special tokens + 256 bytes), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator((t for t in texts if isinstance(t, str)), trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        actual = tokenizer.token_to_id(token)
        if actual != expected_id:  # BpeTrainer adds specials first, in order; guard the contract anyway
            raise ConfigError(f"trained tokenizer put {token} at id {actual}, expected {expected_id}")
    tokenizer.post_processor = processors.RobertaProcessing(  # (sep, cls): positional, `cls` clashes in __new__
        (EOS_TOKEN, tokenizer.token_to_id(EOS_TOKEN)),
        (BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN)),
        trim_offsets=True,
        add_prefix_space=False,
    )
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(path))
    return tokenizer


def roberta_special_tokens(**overrides: str | AddedToken) -> dict[str, AddedToken]:
    """RoBERTa's special-token roles (``bos eos sep cls unk pad mask``) as ``AddedToken``s, ``overrides`` by role.

    A plain string becomes a token that is neither stripped nor normalized, except ``mask``, which strips the
    space before it (``AddedToken(lstrip=True)``): "a <mask>" puts the space into the mask, as transformers'
    RoBERTa tokenizers (slow and fast, 4.x) and the published RoBERTa-family ``tokenizer.json`` files do.
    ``sep`` / ``cls`` default to ``eos`` / ``bos``.
    """
    unknown = sorted(set(overrides) - {"bos", "eos", "sep", "cls", "unk", "pad", "mask"})
    if unknown:
        raise ConfigError(f"unknown special-token roles {unknown}")
    strings = {"bos": BOS_TOKEN, "eos": EOS_TOKEN, "unk": UNK_TOKEN, "pad": PAD_TOKEN, "mask": MASK_TOKEN}
    roles = {**strings, **overrides}
    roles.setdefault("sep", roles["eos"])
    roles.setdefault("cls", roles["bos"])
    return {
        role: token
        if isinstance(token, AddedToken)
        else AddedToken(str(token), lstrip=role == "mask", rstrip=False, normalized=False, special=True)
        for role, token in roles.items()
    }


def build_roberta_tokenizer(
    vocab_file: str | Path,
    merges_file: str | Path,
    *,
    special_tokens: dict[str, AddedToken] | None = None,
    added_tokens: Iterable[AddedToken] = (),
    add_prefix_space: bool = False,
    trim_offsets: bool = True,
    lowercase: bool = False,
) -> Tokenizer:
    """The byte-level BPE tokenizer that transformers builds from a RoBERTa-family ``vocab.json`` + ``merges.txt``
    (``RobertaTokenizerFast`` / its slow-to-fast converter): BPE without unk or dropout, ByteLevel pre-tokenizer
    and decoder, ``RobertaProcessing`` (``cls ... sep``) post-processor.

    ``special_tokens`` maps roles to tokens (default :func:`roberta_special_tokens`); ``added_tokens`` are
    further tokens in id order (ids after the vocabulary, as transformers assigns them). ``lowercase`` adds a
    ``Lowercase`` normalizer (specials are never normalized).
    """
    try:
        bpe = models.BPE.from_file(
            str(vocab_file),
            str(merges_file),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable or malformed files
        raise ConfigError(f"cannot build a BPE tokenizer from {vocab_file} and {merges_file}: {exc}") from None
    tokenizer = Tokenizer(bpe)
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, trim_offsets=trim_offsets)
    tokenizer.decoder = decoders.ByteLevel()
    specials = special_tokens or roberta_special_tokens()
    # Explicitly numbered tokens first (in id order), then the roles: a token missing from vocab.json gets the
    # next free id, the same order transformers adds them in.
    seen: set[str] = set()
    for token in [*added_tokens, *specials.values()]:
        if token.content not in seen:
            seen.add(token.content)
            (tokenizer.add_special_tokens if token.special else tokenizer.add_tokens)([token])
    sep, cls = specials["sep"].content, specials["cls"].content
    tokenizer.post_processor = processors.RobertaProcessing(  # (sep, cls): positional, `cls` clashes in __new__
        (sep, tokenizer.token_to_id(sep)),
        (cls, tokenizer.token_to_id(cls)),
        trim_offsets=trim_offsets,
        add_prefix_space=add_prefix_space,
    )
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json``; ``NotFound`` when absent, ``ConfigError`` when it does not parse."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception subclass on parse errors
        raise ConfigError(f"cannot load tokenizer {path}: {exc}") from exc


class TextPreprocessor(PreprocessorBase):
    """``str`` -> ``list[int]`` token ids (``<s> ... </s>``) -> ``{"input_ids", "attention_mask"}``.

    ``max_length`` (tokens, specials included) defaults to the config's and may only be tightened by the
    server. Over-long texts are truncated (keeping the final ``</s>``) when ``truncate`` is true, otherwise
    refused with ``PayloadTooLarge``; ``load_item(..., truncate=...)`` overrides it per call.
    """

    modality = "text"

    def __init__(
        self,
        cfg: TextPreprocessingConfig | None = None,
        base_dir: str | Path | None = None,
        *,
        max_length: int | None = None,
        truncate: bool = True,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.cfg = cfg or TextPreprocessingConfig()
        self.max_length = int(max_length if max_length is not None else self.cfg.max_length)
        if self.max_length < 2:
            raise ConfigError(f"text max_length must be >= 2 (room for <s> and </s>), got {self.max_length}")
        if max_length is not None and max_length > self.cfg.max_length:
            raise ConfigError(
                f"text max_length {max_length} exceeds the model's limit {self.cfg.max_length} "
                "(learned positions); it can only be lowered"
            )
        self.truncate = bool(truncate)
        self.pad_id = int(self.cfg.pad_id)
        if tokenizer is None:
            if base_dir is None:
                raise ConfigError("TextPreprocessor needs base_dir (the directory holding the tokenizer file)")
            self.tokenizer_path: Path | None = Path(base_dir) / self.cfg.tokenizer_file
            tokenizer = load_tokenizer(self.tokenizer_path)
        else:
            self.tokenizer_path = None
        # This class owns truncation, padding and the placement of special tokens.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        tokenizer.encode_special_tokens = True
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.token_to_id(BOS_TOKEN)
        self.eos_id = tokenizer.token_to_id(EOS_TOKEN)
        if self.bos_id is None or self.eos_id is None:
            raise ConfigError(f"tokenizer has no {BOS_TOKEN} / {EOS_TOKEN} tokens (RoBERTa layout expected)")
        tokenizer_pad = tokenizer.token_to_id(PAD_TOKEN)
        if tokenizer_pad is not None and tokenizer_pad != self.pad_id:
            raise ConfigError(f"config pad_id={self.pad_id} but the tokenizer has {PAD_TOKEN} at id {tokenizer_pad}")
        # Tokenizers saved with a post-processor (RobertaProcessing / TemplateProcessing) add <s> ... </s>
        # themselves; a bare one gets them added here so the model always sees the same layout.
        self.adds_special_tokens = tokenizer.post_processor is not None
        probe = self._encode("")
        if probe != [self.bos_id, self.eos_id]:
            raise ConfigError(
                f"tokenizer encodes '' as {probe}; expected [{self.bos_id}, {self.eos_id}] (<s> </s>). "
                "Its post-processor must produce RoBERTa-style <s> ... </s>"
            )

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, text: str) -> list[int]:
        if self.adds_special_tokens:
            return list(self.tokenizer.encode(text, add_special_tokens=True).ids)
        return [self.bos_id, *self.tokenizer.encode(text, add_special_tokens=False).ids, self.eos_id]

    def _check_text(self, text: Any) -> str:
        if not isinstance(text, str):
            raise InvalidInput(f"text input must be a string, got {type(text).__name__}")
        return text

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` encodes to, specials included, before any truncation."""
        return len(self._encode(self._check_text(text)))

    def tokenize_document(self, text: str) -> list[int]:
        """Token ids ``[<s>, ..., </s>]`` of a whole document, with no length limit: pretraining concatenates
        documents and cuts the stream into fixed blocks, so a long document is data, not an error."""
        return self._encode(self._check_text(text))

    def load_item(self, raw: Any, *, truncate: bool | None = None) -> list[int]:
        """Token ids ``[<s>, ..., </s>]`` of one string, at most ``max_length`` long."""
        text = self._check_text(raw)
        ids = self._encode(text)
        if len(ids) <= self.max_length:
            return ids
        if not (self.truncate if truncate is None else truncate):
            raise PayloadTooLarge(
                f"text is {len(ids)} tokens long; the limit is {self.max_length} tokens (special tokens included)"
            )
        if ids[-1] == self.eos_id:
            return [*ids[: self.max_length - 1], self.eos_id]
        return ids[: self.max_length]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def collate(self, items: list[list[int]]) -> dict[str, np.ndarray]:
        """Right-pad to the longest item: ``input_ids`` (pad_id) and ``attention_mask`` (1 real, 0 pad), int64."""
        check_batch(items, self.modality)
        lengths = [len(item) for item in items]
        if min(lengths) == 0:
            raise InvalidInput("cannot collate an empty token sequence")
        input_ids = np.full((len(items), max(lengths)), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(items), max(lengths)), dtype=np.int64)
        for row, (item, length) in enumerate(zip(items, lengths, strict=True)):
            input_ids[row, :length] = np.asarray(item, dtype=np.int64)
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def describe(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "max_length": self.max_length,
            "truncate": self.truncate,
            "pad_id": self.pad_id,
            "vocab_size": self.vocab_size,
            "tokenizer_file": self.cfg.tokenizer_file,
        }
