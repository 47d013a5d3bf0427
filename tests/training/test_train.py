"""Tiny end-to-end runs per modality and version, checkpoints, bit-exact resume, plots, collapse guard."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
CASES = [(m, v) for m in ("audio", "image", "text") for v in ("v1", "v2")]
# A repeated batch: the whole (tiny) dataset in every step, a slow constant teacher, a constant lr.
REPEATED = ["run.max_steps=12", "optim.schedule=constant", "optim.warmup_steps=3",
            "objective.ema.tau0=0.999", "objective.ema.tau_end=0.999"]  # fmt: skip


@pytest.mark.parametrize(("modality", "version"), CASES)
def test_tiny_run_loss_finite_and_decreasing(h, tiny_data, tmp_path, modality, version):
    batch = 8 if modality == "text" else 12
    # Audio and v1 text batch by a budget (fairseq max_tokens): 12 clips of <= 1 s, 8 blocks of <= 64 tokens.
    budget = {"audio": [f"data.max_tokens={12 * 16000}"], "text": ["data.max_tokens=512"] if version == "v1" else []}
    cfg = h.tiny_config(
        f"tiny-{modality}-{version}", tiny_data[modality], tmp_path, f"data.batch_size={batch}",
        *budget.get(modality, []), *REPEATED,
    )  # fmt: skip
    trainer = h.train(cfg)
    values = h.losses(tmp_path)
    assert len(values) == 12 and all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) / 3 < sum(values[:3]) / 3, values
    # The run directory: metrics, plot, a project checkpoint + a resume-only train state.
    step = tmp_path / "checkpoints" / "step_00000012"
    assert {p.name for p in step.iterdir()} >= {"model.safetensors", "config.json", "train_state.pt"}
    assert (tmp_path / "checkpoints" / "latest").resolve() == step.resolve()
    config = json.loads((step / "config.json").read_text())
    assert config["format"] == "d2v-checkpoint" and config["model"]["modality"] == modality
    assert config["model"]["version"] == (1 if version == "v1" else 2)
    if modality == "text":
        assert (step / "tokenizer.json").is_file()
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(step / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
        assert config["model"]["text"]["vocab_size"] == vocab <= 512  # the model follows the trained tokenizer
    weights = load_file(str(step / "model.safetensors"))
    assert not any(k.startswith(("head", "decoder")) for k in weights)  # training-only parts stay out
    assert torch.equal(
        weights["transformer.blocks.0.mlp.fc1.weight"], trainer.model.transformer.blocks[0].mlp.fc1.weight
    )
    plot = tmp_path / "training.png"
    assert plot.is_file() and plot.stat().st_size > 10_000
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "target_std", "pred_std", "lr", "tau", "samples_per_s", "tokens_per_s"):
        assert key in record
    if modality != "text":  # the corrupt file of the tiny set was skipped (and counted), not fatal
        assert record["skipped_files"] >= 1


def test_checkpoint_loads_for_export(h, tiny_data, tmp_path):
    from d2v.models.checkpoint import load_checkpoint

    h.train(h.tiny_config("tiny-image-v2", tiny_data["image"], tmp_path, "run.max_steps=2", "data.batch_size=4"))
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "latest")
    out = ckpt.model.encode(torch.zeros(1, 3, 32, 32))
    assert out.last_hidden.shape == (1, 1 + 64, 64)
    assert ckpt.preprocessing.image_size == 32


@pytest.mark.parametrize(
    ("recipe", "extra"),
    [
        ("tiny-audio-v1", ["data.num_workers=1"]),  # dropout + layer RNG, a worker process
        ("tiny-text-v2", ["optim.grad_accum=2"]),  # clones, decoder noise, accumulation
        ("tiny-image-v2", ["run.precision=bf16"]),  # autocast
    ],
)
def test_resume_is_bit_exact(h, tiny_data, tmp_path, recipe, extra):
    modality = recipe.split("-")[1]
    common = ["data.batch_size=4", "run.save_every=2", "run.keep_last=3", *extra]
    straight = tmp_path / "straight"
    h.train(h.tiny_config(recipe, tiny_data[modality], straight, "run.max_steps=4", *common))
    resumed = tmp_path / "resumed"
    h.train(h.tiny_config(recipe, tiny_data[modality], resumed, "run.max_steps=4", *common), until=2)  # preempted
    h.train(h.tiny_config(recipe, tiny_data[modality], resumed, "run.max_steps=4", *common), resume=resumed)
    assert h.losses(straight) == h.losses(resumed)
    a = load_file(str(straight / "checkpoints" / "step_00000004" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(straight / "checkpoints" / "step_00000004" / "train_state.pt", weights_only=True)
    sb = torch.load(resumed / "checkpoints" / "step_00000004" / "train_state.pt", weights_only=True)
    ta, tb = sa["teacher"]["module"], sb["teacher"]["module"]
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert sa["micro_batches"] == sb["micro_batches"]


def test_keep_last_and_best(h, tiny_data, tmp_path):
    cfg = h.tiny_config("tiny-image-v1", tiny_data["image"], tmp_path, "run.max_steps=5", "run.save_every=1",
                      "run.keep_last=2", "data.batch_size=4", "run.tensorboard=true")  # fmt: skip
    h.train(cfg)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    root = tmp_path / "checkpoints"
    steps = sorted(p.name for p in root.glob("step_*"))
    best = json.loads((root / "best.json").read_text())
    assert steps[-2:] == ["step_00000004", "step_00000005"]
    assert set(steps) == {"step_00000004", "step_00000005", best["path"]}
    assert not list(root.glob(".tmp*"))


def test_collapse_guard_warns_and_stops(h, tiny_data, tmp_path, caplog):
    from d2v.training.trainer import TrainingStopped

    common = ["run.max_steps=3", "data.batch_size=4", "objective.collapse.check_after_step=2",
              "objective.collapse.min_target_std=100"]  # fmt: skip
    with caplog.at_level("WARNING"):
        h.train(h.tiny_config("tiny-image-v1", tiny_data["image"], tmp_path / "warn", *common))
    assert "collapse suspected" in caplog.text
    with pytest.raises(TrainingStopped, match="target std"):
        h.train(
            h.tiny_config(
                "tiny-image-v1", tiny_data["image"], tmp_path / "stop", *common, "objective.collapse.stop=true"
            )
        )
    assert (tmp_path / "stop" / "checkpoints" / "step_00000002").is_dir()


def test_plot_command(h, tiny_data, tmp_path):
    h.train(h.tiny_config("tiny-image-v1", tiny_data["image"], tmp_path, "run.max_steps=3", "data.batch_size=4"))
    (tmp_path / "training.png").unlink()
    proc = subprocess.run([sys.executable, "-m", "d2v.cli", "train", "plot", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    png = (tmp_path / "training.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    missing = subprocess.run([sys.executable, "-m", "d2v.cli", "train", "plot", str(tmp_path / "nope")],
                             capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert missing.returncode != 0 and "metrics.jsonl" in missing.stderr
