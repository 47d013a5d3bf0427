"""The work behind ``d2v quickstart``: pretrain, export and install the default tiny models.

For each modality: write the train split of the committed sample data (``data/``) as an unlabelled
pretraining set, run ``d2v train`` in this process with ``training/recipes/quickstart-<modality>.yaml``
(seeded), export the last checkpoint with ``d2v export`` (fp32 ONNX with the layer average in the graph,
plus an int8 variant when it passes its cosine bar), and move the result atomically into
``<store>/d2v-<modality>-tiny/``. Each model directory also keeps the checkpoint it was exported from
(``checkpoint/``, for ``d2v probe`` / ``d2v quality-report``), the run's curves (``training/``) and a
``quickstart.json`` with the provenance. A failure leaves the store as it was.

Imports torch (through the training and export packages) lazily, inside ``build_models``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d2v.errors import ConfigError, D2VError
from d2v.paths import DEFAULT_MODEL_NAMES

log = logging.getLogger(__name__)

MODALITIES = ("text", "image", "audio")
QUICKSTART_FILE = "quickstart.json"
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json")
RUN_FILES = ("metrics.jsonl", "training.png", "train_config.yaml")


def recipe_for(modality: str) -> Path:
    from d2v.training.config import RECIPES_DIR

    return RECIPES_DIR / f"quickstart-{modality}.yaml"


@dataclass
class QuickstartOptions:
    store: Path
    seed: int = 0
    steps_scale: float = 1.0  # multiplies each recipe's run.max_steps (reduced budgets for tests / CI)
    max_steps: int | None = None  # overrides every recipe's run.max_steps
    modalities: tuple[str, ...] = MODALITIES
    force: bool = False  # rebuild models that are already in the store
    overrides: dict[str, list[str]] = field(default_factory=dict)  # modality -> extra KEY=VALUE overrides
    variants: tuple[str, ...] = ("int8",)  # extra ONNX variants, kept only when they pass their bar
    data_dir: Path | None = None
    threads: int = 0  # torch threads for training (0 = the recipe's run.threads)
    progress: bool = True
    export: bool = True  # False: checkpoint only (quality-report tuning runs; such a store is not servable)

    def validate(self) -> None:
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ConfigError(f"--modalities: expected some of {', '.join(MODALITIES)}, got {list(self.modalities)}")
        if not self.steps_scale > 0:
            raise ConfigError(f"--steps-scale must be > 0, got {self.steps_scale}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")


def parse_overrides(items: Sequence[str], modalities: Sequence[str] = MODALITIES) -> dict[str, list[str]]:
    """``MODALITY:KEY=VALUE`` (one modality) or ``KEY=VALUE`` (all) -> ``{modality: [KEY=VALUE, ...]}``."""
    out: dict[str, list[str]] = {m: [] for m in modalities}
    for item in items:
        head, sep, rest = item.partition(":")
        if sep and "=" not in head:
            if head not in MODALITIES:
                raise ConfigError(f"--override {item!r}: {head!r} is not one of {', '.join(MODALITIES)}")
            if head in out:
                out[head].append(rest)
        else:
            for m in out:
                out[m].append(item)
    return out


def _scaled_steps(recipe: Path, opts: QuickstartOptions, overrides: list[str]) -> int:
    from d2v.training.config import load_config

    if opts.max_steps is not None:
        return opts.max_steps
    base = load_config(recipe, [o for o in overrides if o.startswith("run.max_steps=")]).run.max_steps
    return max(1, round(base * opts.steps_scale))


@contextlib.contextmanager
def _quiet_export():
    """The ONNX exporter chats on stdout and at INFO; keep it for errors only."""
    noisy = ("onnx_ir", "onnxscript", "torch.onnx", "onnxruntime", "fusion_base", "d2v.export")
    levels = {name: logging.getLogger(name).level for name in noisy}
    buffer = io.StringIO()
    try:
        for name in noisy:
            logging.getLogger(name).setLevel(logging.WARNING)
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def train_one(modality: str, opts: QuickstartOptions, pretrain_data: Path, run_dir: Path) -> dict[str, Any]:
    """``d2v train --config quickstart-<modality> data.path=... run.out_dir=... run.seed=...`` in-process."""
    import argparse

    from d2v.training.train import add_train_arguments
    from d2v.training.train import run as train_run

    recipe = recipe_for(modality)
    extra = list(opts.overrides.get(modality, []))
    steps = _scaled_steps(recipe, opts, extra)
    overrides = [
        f"data.path={pretrain_data}",
        f"run.out_dir={run_dir}",
        f"run.seed={opts.seed}",
        f"run.max_steps={steps}",
        f"run.save_every={steps}",
        "run.keep_last=1",
        "run.keep_best=false",
        "run.tensorboard=false",
        f"run.progress={'true' if opts.progress else 'false'}",
        "run.device=cpu",
        *([f"run.threads={opts.threads}"] if opts.threads else []),
        *[o for o in extra if not o.startswith("run.max_steps=")],
    ]
    parser = argparse.ArgumentParser(prog="d2v train")
    add_train_arguments(parser)
    args = parser.parse_args(["--config", str(recipe), *overrides])
    start = time.perf_counter()
    rc = train_run(args)
    if rc:
        raise D2VError(f"training the {modality} model failed (exit status {rc})")
    seconds = time.perf_counter() - start
    metrics = _last_metrics(run_dir / "metrics.jsonl")
    return {
        "recipe": recipe.stem,
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "final_loss": metrics.get("loss"),
        "target_std": metrics.get("target_std"),
        "overrides": extra,
    }


def _last_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def export_one(modality: str, checkpoint: Path, out: Path, opts: QuickstartOptions) -> dict[str, Any]:
    from d2v.export.exporter import ExportOptions, export_onnx

    start = time.perf_counter()
    export_opts = ExportOptions(
        name=DEFAULT_MODEL_NAMES[modality],
        variants=list(opts.variants),
        variants_explicit=False,
        threads=opts.threads,
    )
    with _quiet_export() as chatter:
        try:
            manifest = export_onnx(checkpoint, out, export_opts)
        except BaseException:
            print(chatter.getvalue(), end="")
            raise
    return {
        "export_seconds": round(time.perf_counter() - start, 1),
        "variants": sorted(manifest.variants),
        "embedding_dim": manifest.embedding_dim,
        "parity_max_abs_diff": manifest.parity.get("max_abs_diff"),
    }


def install(stage: Path, target: Path) -> None:
    """Move the finished model directory ``stage`` to ``target`` (replacing an old one only at the end)."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(stage, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, target)


def build_one(modality: str, opts: QuickstartOptions, work: Path) -> dict[str, Any]:
    """Pretrain + export one modality into ``<store>/d2v-<modality>-tiny`` (atomically)."""
    from d2v.paths import sample_data_dir
    from d2v.quality import write_pretraining_data

    name = DEFAULT_MODEL_NAMES[modality]
    data_dir = Path(opts.data_dir) if opts.data_dir else sample_data_dir()
    pretrain_data = write_pretraining_data(modality, data_dir, work / "data")
    run_dir = work / f"run-{modality}"
    info = train_one(modality, opts, pretrain_data, run_dir)
    checkpoint = (run_dir / "checkpoints" / "latest").resolve()
    stage_root = Path(tempfile.mkdtemp(prefix=f".{name}.quickstart-", dir=opts.store))
    try:
        stage = stage_root / name
        if opts.export:
            info.update(export_one(modality, checkpoint, stage, opts))
        else:
            stage.mkdir()
            info.update({"export_seconds": 0.0, "variants": []})
        (stage / "checkpoint").mkdir()
        for file in CHECKPOINT_FILES:
            if (checkpoint / file).is_file():
                shutil.copy2(checkpoint / file, stage / "checkpoint" / file)
        (stage / "training").mkdir()
        for file in RUN_FILES:
            if (run_dir / file).is_file():
                shutil.copy2(run_dir / file, stage / "training" / file)
        info.update({"name": name, "modality": modality, "seed": opts.seed, "created": time.time()})
        (stage / QUICKSTART_FILE).write_text(json.dumps(info, indent=2) + "\n")
        install(stage, opts.store / name)
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
    info["path"] = str(opts.store / name)
    return info


def build_models(opts: QuickstartOptions) -> dict[str, Any]:
    """Build every requested default model that is missing (or all with ``force``); returns a summary."""
    from tqdm.auto import tqdm

    opts.validate()
    opts.store = Path(opts.store).expanduser().absolute()
    opts.store.mkdir(parents=True, exist_ok=True)
    present = "model.json" if opts.export else "quickstart.json"
    todo = [m for m in opts.modalities if opts.force or not (opts.store / DEFAULT_MODEL_NAMES[m] / present).is_file()]
    summary: dict[str, Any] = {"store": str(opts.store), "seed": opts.seed, "models": {}, "skipped": []}
    summary["skipped"] = [m for m in opts.modalities if m not in todo]
    for m in summary["skipped"]:
        print(f"d2v quickstart: {DEFAULT_MODEL_NAMES[m]} is already in {opts.store} (--force rebuilds it)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="d2v-quickstart-") as tmp:
        bar = tqdm(total=len(todo), desc="quickstart", unit="model", disable=not opts.progress or not todo, position=0)
        try:
            for i, modality in enumerate(todo, 1):
                bar.set_postfix_str(f"{modality} ({i}/{len(todo)}): pretrain + export")
                tqdm.write(f"d2v quickstart: [{i}/{len(todo)}] {DEFAULT_MODEL_NAMES[modality]}: pretraining")
                info = build_one(modality, opts, Path(tmp))
                summary["models"][modality] = info
                tqdm.write(
                    f"d2v quickstart: [{i}/{len(todo)}] {info['name']}: {info['steps']} steps in "
                    f"{info['train_seconds']:.0f} s, exported in {info['export_seconds']:.0f} s"
                )
                bar.update(1)
        finally:
            bar.close()
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    rows = [("model", "steps", "train s", "export s", "final loss", "dim", "variants")]
    for info in summary["models"].values():
        loss = info.get("final_loss")
        rows.append(
            (
                info["name"],
                str(info["steps"]),
                f"{info['train_seconds']:.1f}",
                f"{info['export_seconds']:.1f}",
                "n/a" if loss is None else f"{loss:.4f}",
                str(info.get("embedding_dim")),
                ",".join(info.get("variants", [])),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"store: {summary['store']}  (seed {summary['seed']}, {summary['total_seconds']:.0f} s)")
    if summary["skipped"]:
        lines.append(f"already present (kept): {', '.join(DEFAULT_MODEL_NAMES[m] for m in summary['skipped'])}")
    return "\n".join(lines)


def run_quickstart(opts: QuickstartOptions) -> dict[str, Any]:
    """``d2v quickstart``: build, print the summary, return it."""
    summary = build_models(opts)
    if summary["models"]:
        print(format_summary(summary))
        print(f"serve them with: d2v serve --store {summary['store']}")
    return summary
