"""Recipes, dotted overrides, type checking and the errors ``d2v train`` reports for bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from d2v.core.errors import ConfigError, NotFound
from d2v.training.config import (
    RECIPES_DIR,
    apply_override,
    load_config,
    resolve_model_config,
    resolve_preprocessing_config,
    validate,
)

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def test_every_size_modality_version_has_a_recipe():
    expected = {
        f"{s}-{m}-{v}" for s in ("tiny", "base", "large") for m in ("audio", "image", "text") for v in ("v1", "v2")
    }
    assert expected <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_resolves(name):
    cfg = load_config(name)
    model = resolve_model_config(cfg, vocab_size=1000 if cfg.modality == "text" else None)
    resolve_preprocessing_config(cfg, model)
    assert model.version == (1 if cfg.objective.version == "v1" else 2)
    assert cfg.name == name


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("base-audio-v1", {"optim.lr": 5e-4, "optim.schedule": "tri_stage", "objective.ema.tau0": 0.999,
                           "objective.ema.tau_end": 0.9999, "objective.ema.anneal_steps": 30000,
                           "objective.mask.prob": 0.65, "objective.mask.length": 10, "run.max_steps": 400000}),
        ("base-audio-v2", {"optim.lr": 7.5e-4, "optim.warmup_steps": 8000, "objective.clone_batch": 8,
                           "objective.ema.tau_end": 0.99999, "objective.ema.anneal_steps": 75000,
                           "objective.mask.prob": 0.5, "objective.mask.adjust": 0.05, "objective.mask.length": 5}),
        ("base-image-v1", {"optim.lr": 2e-3, "optim.weight_decay": 0.05, "optim.clip_norm": 3.0,
                           "objective.ema.tau0": 0.9998, "objective.mask.num_patches": 120,
                           "objective.loss_beta": 2.0}),
        ("base-image-v2", {"optim.lr": 1e-3, "optim.betas": (0.9, 0.95), "optim.clip_norm": 4.0,
                           "optim.warmup_steps": 50040, "objective.clone_batch": 16, "objective.mask.inverse": True,
                           "objective.mask.prob": 0.8, "objective.cls_loss": 0.01, "run.max_steps": 375300}),
        ("base-text-v1", {"optim.lr": 2e-4, "optim.clip_norm": 5.0, "optim.warmup_steps": 10000,
                          "objective.loss_beta": 4.0, "objective.mask.prob": 0.35, "objective.mask.length": 4,
                          "objective.ema.anneal_steps": 300000, "data.block_size": 512}),
        ("base-text-v2", {"optim.lr": 2e-4, "optim.clip_norm": 1.0, "objective.clone_batch": 8,
                          "objective.mask.prob": 0.48, "objective.ema.tau0": 0.9999, "objective.loss_scale": 1.0}),
        ("large-audio-v2", {"optim.lr": 4e-4, "objective.clone_batch": 12, "objective.ema.tau0": 0.9997,
                            "objective.ema.tau_end": 1.0, "objective.ema.anneal_steps": 300000,
                            "run.max_steps": 600000, "optim.warmup_steps": 10000, "data.max_tokens": 320000,
                            "model.transformer.layerdrop": 0.0, "optim.no_decay_1d": False}),
        # issue 14: batching budgets, weight-decay rules, Large values, v1 vision schedule and augmentation
        ("base-audio-v1", {"data.max_tokens": 3800000, "optim.final_lr_scale": 0.01, "optim.no_decay_1d": False,
                           "objective.mask.require_same_masks": True, "data.max_seconds": 20.0}),
        ("base-audio-v2", {"data.max_tokens": 1000000, "optim.no_decay_1d": False}),
        ("base-text-v1", {"data.max_tokens": 8192, "data.text_blocks": "complete_doc", "optim.no_decay_1d": False}),
        ("base-text-v2", {"data.text_blocks": "none", "optim.no_decay_1d": False}),
        ("large-text-v2", {"data.batch_size": 2, "optim.lr": 1e-4, "run.max_steps": 600000}),
        ("large-image-v2", {"data.batch_size": 8, "optim.lr": 4e-4, "objective.ema.anneal_steps": 150000}),
        ("base-image-v1", {"optim.min_lr_ratio": 0.005, "data.color_jitter": 0.4, "objective.teacher_fp32": True,
                           "optim.no_decay_names": ("cls_token",), "run.max_steps": 500000}),
        ("large-image-v1", {"optim.lr": 1e-3, "optim.warmup_steps": 24960, "run.max_steps": 249600,
                            "optim.min_lr_ratio": 0.01, "data.batch_size": 64, "data.color_jitter": 0.4}),
    ],
)  # fmt: skip
def test_paper_values(name, values):
    cfg = load_config(name)
    for dotted, expected in values.items():
        if dotted.startswith("model."):  # resolved against the preset
            value = resolve_model_config(cfg, vocab_size=1000 if cfg.modality == "text" else None)
            dotted = dotted.removeprefix("model.")
        else:
            value = cfg
        for part in dotted.split("."):
            value = getattr(value, part)
        assert value == expected, dotted


def test_overrides_are_typed():
    cfg = load_config(
        "tiny-audio-v1",
        ["optim.lr=5e-4", "optim.betas=[0.9,0.95]", "run.max_steps=7", "objective.collapse.stop=true",
         "model.transformer.depth=2", "model.targets.top_k=2", "data.crop_scale=[0.5,1.0]"],
    )  # fmt: skip
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)  # YAML reads 5e-4 as a string
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.run.max_steps == 7 and cfg.objective.collapse.stop is True
    assert cfg.data.crop_scale == (0.5, 1.0)
    assert resolve_model_config(cfg).transformer.depth == 2
    # Strict: text is never guessed into another type; the error names the key and the type it expected.
    with pytest.raises(ConfigError, match=r"data\.crop_scale: expected a list"):
        load_config("tiny-audio-v1", ["data.crop_scale=0.5,1.0"])
    with pytest.raises(ConfigError, match=r"run\.max_steps: expected int, got 7\.5"):
        load_config("tiny-audio-v1", ["run.max_steps=7.5"])
    with pytest.raises(ConfigError, match=r"data\.shuffle: expected bool, got 'yes'"):
        load_config("tiny-audio-v1", ["data.shuffle='yes'"])


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("optim.lr=fast", "optim.lr"),
        ("optim.lrr=1e-3", "did you mean 'lr'"),
        ("run.max_steps=1.5", "run.max_steps"),
        ("objective.version=v3", "objective.version"),
        ("objective.mask.kind=spiral", "objective.mask.kind"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("model.transformer.depth=deep", "model.transformer.depth"),
        ("model.transformer.dimm=8", "model.transformer.dimm"),
        ("model.preset=huge", "model.preset"),
        ("objective.head.dimm=3", "objective.head.dimm"),
        ("lr", "KEY=VALUE"),
    ],
)
def test_bad_values_name_the_field(override, names):
    with pytest.raises(ConfigError) as info:
        cfg = load_config("tiny-audio-v1", [override])
        resolve_model_config(cfg)
        from d2v.training.objective import head_config

        head_config(cfg.objective)
    assert names in info.value.message


def test_validate_names_fields(tmp_path):
    cfg = load_config("tiny-audio-v1", [f"data.path={tmp_path}", "optim.lr=-1"])
    with pytest.raises(ConfigError, match="optim.lr"):
        validate(cfg)
    with pytest.raises(NotFound, match="data.path"):
        validate(load_config("tiny-audio-v1", [f"data.path={tmp_path / 'missing'}"]))
    with pytest.raises(ConfigError, match="data.path"):
        validate(load_config("tiny-audio-v1"))
    with pytest.raises(NotFound, match="config not found"):
        load_config("no-such-recipe")


def test_apply_override_nested():
    raw: dict = {}
    apply_override(raw, "a.b.c=3")
    apply_override(raw, "a.d=null")
    assert raw == {"a": {"b": {"c": 3}, "d": None}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "tiny-audio-v1", "optim.lr=abc"], "optim.lr"),
        (["--config", "tiny-audio-v1", "data.path=/nonexistent/d2v"], "data.path"),
        (["--config", "nope-recipe"], "config not found"),
    ],
)
def test_cli_exits_nonzero_naming_the_field(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "d2v.cli", "train", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode != 0
    assert message in proc.stderr


def test_cli_missing_data_files(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "d2v.cli", "train", "--config", "tiny-image-v1", f"data.path={tmp_path / 'empty'}",
         "run.progress=false", f"run.out_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "data.path" in proc.stderr and "no image files" in proc.stderr


def test_resume_flag_does_not_swallow_an_override(tmp_path):
    from d2v.cli import build_parser
    from d2v.training.train import load_from_args

    args = build_parser().parse_args(
        ["train", "--config", "tiny-image-v1", "--resume", f"data.path={tmp_path}", "optim.lr=1e-4"]
    )
    cfg = load_from_args(args)
    assert args.resume == "" and cfg.data.path == str(tmp_path) and cfg.optim.lr == 1e-4


def test_validate_batching_and_augmentation_keys(tmp_path):
    with pytest.raises(ConfigError, match="data.text_blocks"):  # variable-length blocks need a token budget
        validate(load_config("tiny-text-v1", [f"data.path={tmp_path}", "data.max_tokens=0"]))
    with pytest.raises(ConfigError, match="data.max_tokens"):
        validate(load_config("tiny-image-v1", [f"data.path={tmp_path}", "data.max_tokens=1000"]))
    with pytest.raises(ConfigError, match="data.color_jitter"):
        validate(load_config("tiny-image-v1", [f"data.path={tmp_path}", "data.color_jitter=1.5"]))
