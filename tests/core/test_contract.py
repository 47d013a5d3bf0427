"""The runtime side of the ONNX contract: feeds, output choice, token trimming, synthetic inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from d2v.core.contract import (
    CLS_OUTPUT,
    INPUT_NAMES,
    MEAN_OUTPUT,
    PRIMARY_INPUT,
    TOKENS_OUTPUT,
    TOP_K_INPUT,
    InputSpec,
    feeds,
    output_for,
    output_names,
    real_tokens,
    synthetic_inputs,
    warmup_lengths,
)


@dataclass
class TopK:
    supports_top_k: bool
    top_k: int = 3


@dataclass
class Spec:
    dtype: str
    shape: list


@dataclass
class Manifest:
    modality: str
    preprocessing: dict
    inputs: dict = field(default_factory=dict)


def test_feeds_add_top_k_only_where_the_graph_takes_it():
    inputs = {"pixel_values": np.zeros((1, 3, 4, 4), np.float32)}
    assert feeds(TopK(False), inputs) is inputs
    fed = feeds(TopK(True), inputs)
    assert fed[TOP_K_INPUT].tolist() == [3] and fed[TOP_K_INPUT].dtype == np.int64 and TOP_K_INPUT not in inputs
    assert feeds(TopK(True), inputs, top_k=1)[TOP_K_INPUT].tolist() == [1]


def test_output_choice_and_names():
    assert (output_for("mean"), output_for("cls"), output_for("none")) == (MEAN_OUTPUT, CLS_OUTPUT, TOKENS_OUTPUT)
    assert CLS_OUTPUT not in output_names("audio") and CLS_OUTPUT in output_names("image")
    assert PRIMARY_INPUT == {"text": "input_ids", "audio": "input_values", "image": "pixel_values"}


def test_real_tokens_trims_each_row_by_its_mask():
    tokens = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    rows = real_tokens(tokens, np.array([[1, 1, 0], [1, 0, 0]]))
    assert [r.shape for r in rows] == [(2, 2), (1, 2)]
    np.testing.assert_array_equal(rows[1], tokens[1, :1])


@pytest.mark.parametrize("modality", ["text", "audio", "image"])
def test_synthetic_inputs_follow_the_contract(modality):
    spec = InputSpec(modality, vocab_size=50, image_size=8)
    batch = synthetic_inputs(spec, [5, 3], seed=0)
    assert list(batch) == list(INPUT_NAMES[modality])
    if modality == "image":
        assert batch["pixel_values"].shape == (2, 3, 8, 8)
        return
    mask = batch["attention_mask"]
    assert mask.dtype == np.int64 and mask.sum(axis=1).tolist() == [5, 3]
    if modality == "text":
        ids = batch["input_ids"]
        assert ids[0, 0] == 0 and ids[0, 4] == 2 and ids[1, 2] == 2 and ids[1, 3] == spec.pad_id
        assert ids.max() < 50
    else:
        assert not batch["input_values"][1, 3:].any()
    np.testing.assert_array_equal(
        synthetic_inputs(spec, [5, 3], seed=0)[PRIMARY_INPUT[modality]], batch[PRIMARY_INPUT[modality]]
    )


def test_input_spec_from_a_manifest():
    text = InputSpec.from_manifest(Manifest("text", {"pad_id": 1, "max_length": 8}))
    assert warmup_lengths(text) == [8, 8]
    audio = InputSpec.from_manifest(Manifest("audio", {"sample_rate": 8000}))
    assert warmup_lengths(audio, batch=1) == [8000]
    image = InputSpec.from_manifest(
        Manifest("image", {"image_size": 224}, {"pixel_values": Spec("float32", [-1, 3, 32, 32])})
    )
    assert image.image_size == 32  # the graph's fixed size wins over the preprocessing default


def test_pooled_cosine_takes_the_worst_row_of_every_pooled_output():
    from d2v.core.contract import pooled_cosine, worst_cosine

    ref = {MEAN_OUTPUT: np.array([[1.0, 0.0], [0.0, 1.0]]), CLS_OUTPUT: np.array([[1.0, 1.0], [1.0, 0.0]])}
    same = {k: v * 3 for k, v in ref.items()}  # scale does not count
    assert pooled_cosine(ref, same) == pytest.approx(1.0)
    tilted = {MEAN_OUTPUT: same[MEAN_OUTPUT], CLS_OUTPUT: np.array([[1.0, 1.0], [1.0, 1.0]])}
    assert pooled_cosine(ref, tilted) == pytest.approx(2**-0.5)  # CLS row 2 is 45 degrees off
    assert worst_cosine(np.array([[1.0, 0.0]]), np.array([[np.nan, 0.0]])) == -1.0  # NaN fails, never passes
    assert pooled_cosine({"d2v_token_mask": np.ones((1, 1))}, {}) == 1.0  # nothing pooled to compare
