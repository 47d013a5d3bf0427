import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2v.core.errors import ConfigError, InvalidInput, NotFound, PayloadTooLarge
from d2v.models.preprocessing import (
    SPECIAL_TOKENS,
    TextPreprocessingConfig,
    TextPreprocessor,
    build_preprocessor,
    train_bpe_tokenizer,
)

REPO = Path(__file__).resolve().parents[3]
CORPUS = [
    "data2vec learns contextualised representations for speech, images and text.",
    "The teacher is an exponential moving average of the student.",
    "Targets are the average of the top K layers of the teacher network.",
    "Hello world! Unicode works too: café, naïve, 東京, emoji 🙂.",
] * 10


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(CORPUS, vocab_size=320, path=directory / "tokenizer.json")
    return directory


@pytest.fixture()
def pre(tokenizer_dir):
    return TextPreprocessor(TextPreprocessingConfig(), tokenizer_dir)


def test_trained_tokenizer_has_roberta_specials(tokenizer_dir):
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in data["added_tokens"]}
    assert [ids[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert SPECIAL_TOKENS == ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
    assert data["post_processor"]["type"] == "RobertaProcessing"


def test_vocab_too_small_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe_tokenizer(CORPUS, vocab_size=100, path=tmp_path / "t.json")


def test_round_trip_and_specials(pre):
    text = "The teacher is an exponential moving average, café 東京 🙂"
    ids = pre.load_item(text)
    assert ids[0] == 0 and ids[-1] == 2
    assert pre.decode(ids) == text
    assert pre.count_tokens(text) == len(ids)
    assert pre.load_item("") == [0, 2]


def test_user_typed_special_strings_are_plain_text(pre):
    ids = pre.load_item("<mask> </s> <pad>")
    assert ids[0] == 0 and ids[-1] == 2
    assert not set(ids[1:-1]) & {0, 1, 2, 3, 4}
    assert pre.decode(ids) == "<mask> </s> <pad>"


def test_truncation_keeps_final_eos(tokenizer_dir):
    pre = TextPreprocessor(TextPreprocessingConfig(max_length=6), tokenizer_dir)
    long_text = " ".join(CORPUS[:3])
    full = pre.count_tokens(long_text)
    assert full > 6
    ids = pre.load_item(long_text)
    assert len(ids) == 6 and ids[0] == 0 and ids[-1] == 2
    with pytest.raises(PayloadTooLarge, match=f"{full} tokens"):
        pre.load_item(long_text, truncate=False)
    strict = TextPreprocessor(TextPreprocessingConfig(max_length=6), tokenizer_dir, truncate=False)
    with pytest.raises(PayloadTooLarge):
        strict.load_item(long_text)
    assert strict.load_item("Hi") == pre.load_item("Hi")


def test_limits_can_only_be_tightened(tokenizer_dir):
    pre = build_preprocessor(TextPreprocessingConfig(max_length=64), tokenizer_dir, max_length=16)
    assert pre.describe()["max_length"] == 16
    with pytest.raises(ConfigError, match="only be lowered"):
        TextPreprocessor(TextPreprocessingConfig(max_length=64), tokenizer_dir, max_length=128)
    with pytest.raises(ConfigError, match="no option"):
        build_preprocessor(TextPreprocessingConfig(), tokenizer_dir, max_seconds=3)


def test_collate_pads_right_with_pad_id(pre):
    items = [pre.load_item("Hi"), pre.load_item("The teacher is an exponential moving average."), [0, 2]]
    batch = pre.collate(items)
    assert set(batch) == {"input_ids", "attention_mask"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (3, max(map(len, items)))
    for row, item in enumerate(items):
        assert ids[row, : len(item)].tolist() == item
        assert (ids[row, len(item) :] == 1).all()
        assert mask[row].tolist() == [1] * len(item) + [0] * (ids.shape[1] - len(item))
    np.testing.assert_array_equal(pre(["Hi", "Hi"])["input_ids"], pre.collate([items[0], items[0]])["input_ids"])


def test_invalid_inputs(pre):
    for bad in (None, 3, b"bytes", ["list"]):
        with pytest.raises(InvalidInput, match="must be a string"):
            pre.load_item(bad)
    with pytest.raises(InvalidInput, match="empty"):
        pre.collate([])


def test_missing_or_broken_tokenizer(tmp_path):
    with pytest.raises(NotFound, match="tokenizer file not found"):
        TextPreprocessor(TextPreprocessingConfig(), tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot load tokenizer"):
        TextPreprocessor(TextPreprocessingConfig(), tmp_path)
    with pytest.raises(ConfigError, match="base_dir"):
        TextPreprocessor(TextPreprocessingConfig())


def test_pad_id_mismatch_is_a_config_error(tokenizer_dir):
    with pytest.raises(ConfigError, match="pad_id"):
        TextPreprocessor(TextPreprocessingConfig(pad_id=0), tokenizer_dir)


def test_tokenizer_without_post_processor_gets_specials_added(tokenizer_dir, tmp_path):
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    data["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    bare = TextPreprocessor(TextPreprocessingConfig(), tmp_path)
    assert not bare.adds_special_tokens
    with_pp = TextPreprocessor(TextPreprocessingConfig(), tokenizer_dir)
    assert bare.load_item("moving average") == with_pp.load_item("moving average")


def test_build_from_dict(tokenizer_dir):
    pre = build_preprocessor({"modality": "text", "tokenizer_file": "tokenizer.json", "max_length": 32}, tokenizer_dir)
    assert isinstance(pre, TextPreprocessor) and pre.max_length == 32


def test_package_import_is_torch_free():
    code = "import sys, d2v.models.preprocessing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
