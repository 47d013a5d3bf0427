"""The work behind ``d2v quickstart``: pretrain, export and install the default tiny models.

For each modality: write the train split of the committed sample data (``data/``) as an unlabelled
pretraining set, run ``d2v train`` with ``training/recipes/quickstart-<modality>.yaml`` (seeded,
single-threaded; the runs go side by side, one per core), export the last checkpoint with ``d2v export``
(fp32 ONNX with the layer average in the graph; ``--variants int8`` adds a variant when it passes its
cosine bar), and move the result atomically into ``<store>/d2v-<modality>-tiny/``. Each model directory
also keeps the checkpoint it was exported from (``checkpoint/``, for ``d2v probe`` / ``d2v quality-report``),
the run's curves and log (``training/``) and a ``quickstart.json`` with the provenance. A failure leaves
the store as it was.

Training and export run in child processes (``python -m d2v train|export``); this module stays torch-free.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d2v.core.errors import D2VError
from d2v.core.files import replace_dir
from d2v.core.paths import DEFAULT_MODEL_NAMES
from d2v.workflows.options import QuickstartOptions

log = logging.getLogger(__name__)

QUICKSTART_FILE = "quickstart.json"
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json")
RUN_FILES = ("metrics.jsonl", "training.png", "train_config.yaml")


def recipe_for(modality: str, recipes: dict[str, str] | None = None) -> Path:
    """``training/recipes/quickstart-<modality>.yaml``, or another recipe (name or path) for tuning runs."""
    from d2v.training.config import RECIPES_DIR, resolve_recipe

    if recipes and recipes.get(modality):
        return resolve_recipe(recipes[modality])
    return RECIPES_DIR / f"quickstart-{modality}.yaml"


def _scaled_steps(recipe: Path, opts: QuickstartOptions, overrides: list[str]) -> int:
    from d2v.training.config import load_config

    if opts.max_steps is not None:
        return opts.max_steps
    base = load_config(recipe, [o for o in overrides if o.startswith("run.max_steps=")]).run.max_steps
    return max(1, round(base * opts.steps_scale))


def train_command(modality: str, opts: QuickstartOptions, pretrain_data: Path, run_dir: Path) -> tuple[list[str], int]:
    """``d2v train --config quickstart-<modality> data.path=... run.out_dir=... run.seed=...`` and its steps."""
    recipe = recipe_for(modality, opts.recipes)
    extra = list(opts.overrides.get(modality, []))
    steps = _scaled_steps(recipe, opts, extra)
    overrides = [
        f"data.path={pretrain_data}",
        f"run.out_dir={run_dir}",
        f"run.seed={opts.seed}",
        f"run.max_steps={steps}",
        f"run.save_every={steps}",
        f"run.log_every={max(1, min(10, steps // 20))}",
        "run.keep_last=1",
        "run.keep_best=false",
        "run.tensorboard=false",
        "run.progress=false",  # the parent draws one bar per model from metrics.jsonl
        "run.device=cpu",
        *([f"run.threads={opts.threads}"] if opts.threads else []),
        *[o for o in extra if not o.startswith("run.max_steps=")],
    ]
    return [sys.executable, "-m", "d2v", "train", "--config", str(recipe), *overrides], steps


def export_command(modality: str, checkpoint: Path, out: Path, variants: Sequence[str]) -> list[str]:
    name = DEFAULT_MODEL_NAMES[modality]
    return [
        sys.executable, "-m", "d2v", "export", str(checkpoint), str(out), "--name", name,
        "--variants", ",".join(variants) if variants else "none",
    ]  # fmt: skip


def _last_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:  # a line being written
        return json.loads(lines[-2]) if len(lines) > 1 else {}


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # Tiny models: one thread per process, and as many processes as cores (see --jobs).
    env.setdefault("OMP_NUM_THREADS", str(threads or 1))
    env.setdefault("MKL_NUM_THREADS", str(threads or 1))
    env["PYTHONWARNINGS"] = env.get("PYTHONWARNINGS", "ignore")
    return env


@dataclass
class _Job:
    modality: str
    run_dir: Path
    steps: int
    log: Path
    cmd: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    train_seconds: float = 0.0


def _finish(job: _Job, opts: QuickstartOptions) -> dict[str, Any]:
    """Export the trained checkpoint (child process), add checkpoint + curves + provenance, install."""
    name = DEFAULT_MODEL_NAMES[job.modality]
    checkpoint = (job.run_dir / "checkpoints" / "latest").resolve()
    metrics = _last_metrics(job.run_dir / "metrics.jsonl")
    info: dict[str, Any] = {
        "name": name,
        "modality": job.modality,
        "recipe": recipe_for(job.modality, opts.recipes).stem,
        "steps": job.steps,
        "seed": opts.seed,
        "train_seconds": round(job.train_seconds, 1),
        "final_loss": metrics.get("loss"),
        "target_std": metrics.get("target_std"),
        "overrides": list(opts.overrides.get(job.modality, [])),
    }
    stage_root = Path(tempfile.mkdtemp(prefix=f".{name}.quickstart-", dir=opts.store))
    try:
        stage = stage_root / name
        start = time.perf_counter()
        if opts.export:
            info.update(_export(job, checkpoint, stage, opts))
        else:
            stage.mkdir()
            info.update(variants=[], embedding_dim=None)
        info["export_seconds"] = round(time.perf_counter() - start, 1)
        _copy_run_files(job, checkpoint, stage)
        info["created"] = time.time()
        (stage / QUICKSTART_FILE).write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(stage, opts.store / name)
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
    info["path"] = str(opts.store / name)
    return info


def _export(job: _Job, checkpoint: Path, stage: Path, opts: QuickstartOptions) -> dict[str, Any]:
    """``d2v export`` into ``stage`` (fp32 only when a variant misses its bar); what the manifest reports."""
    name = DEFAULT_MODEL_NAMES[job.modality]
    variants = list(opts.variants)
    rc = _run_logged(export_command(job.modality, checkpoint, stage, variants), job.log, opts)
    if rc and variants:  # a variant under its cosine bar fails the export: keep fp32 only
        log.warning("%s: export with variants %s failed; exporting fp32 only", name, variants)
        variants = []
        rc = _run_logged(export_command(job.modality, checkpoint, stage, variants), job.log, opts)
    if rc:
        raise D2VError(f"exporting {name} failed (exit status {rc}):\n{_tail(job.log)}")
    manifest = json.loads((stage / "model.json").read_text())
    return {
        "variants": sorted(manifest.get("variants", {})),
        "embedding_dim": manifest.get("embedding_dim"),
        "parity_max_abs_diff": (manifest.get("parity") or {}).get("max_abs_diff"),
    }


def _copy_run_files(job: _Job, checkpoint: Path, stage: Path) -> None:
    """The checkpoint the model was exported from (``checkpoint/``) and the run's curves and log (``training/``)."""
    (stage / "checkpoint").mkdir()
    for file in CHECKPOINT_FILES:
        if (checkpoint / file).is_file():
            shutil.copy2(checkpoint / file, stage / "checkpoint" / file)
    (stage / "training").mkdir()
    for file in (*RUN_FILES, job.log.name):
        if (job.run_dir / file).is_file():
            shutil.copy2(job.run_dir / file, stage / "training" / file)


def _run_logged(cmd: list[str], log_path: Path, opts: QuickstartOptions) -> int:
    with log_path.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        return subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_child_env(opts.threads))


def default_jobs(n: int) -> int:
    """Trainings run side by side, one thread each: as many as there are cores (at most ``n``)."""
    return max(1, min(n, os.cpu_count() or 1))


def build_models(opts: QuickstartOptions) -> dict[str, Any]:
    """Build every requested default model that is missing (or all with ``force``); returns a summary.

    Training runs in child processes (``d2v train``), ``jobs`` at a time, each single-threaded and seeded,
    so the result does not depend on the parallelism; each finished run is exported (``d2v export``) and
    installed while the others keep training. The bars follow each run's ``metrics.jsonl``.
    """
    todo, summary = _plan(opts)
    if not todo:
        summary["total_seconds"] = 0.0
        return summary
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="d2v-quickstart-") as tmp:
        built = _run_jobs(_prepare_jobs(todo, opts, Path(tmp)), opts)
    summary["models"] = {m: built[m] for m in todo}
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    return summary


def _plan(opts: QuickstartOptions) -> tuple[list[str], dict[str, Any]]:
    """Validate, resolve and create the store; the modalities to build and the summary's head (skipped ones)."""
    from d2v.core.paths import default_store

    opts.validate()
    opts.store = Path(opts.store if opts.store is not None else default_store()).expanduser().absolute()
    opts.store.mkdir(parents=True, exist_ok=True)
    present = "model.json" if opts.export else QUICKSTART_FILE
    todo = [m for m in opts.modalities if opts.force or not (opts.store / DEFAULT_MODEL_NAMES[m] / present).is_file()]
    summary: dict[str, Any] = {"store": str(opts.store), "seed": opts.seed, "models": {}}
    summary["skipped"] = [m for m in opts.modalities if m not in todo]
    for m in summary["skipped"]:
        print(f"d2v quickstart: {DEFAULT_MODEL_NAMES[m]} is already in {opts.store} (--force rebuilds it)")
    return todo, summary


def _prepare_jobs(todo: Sequence[str], opts: QuickstartOptions, work: Path) -> list[_Job]:
    """Per modality: the train split as pretraining data, a run directory and the ``d2v train`` command."""
    from d2v.core.paths import sample_data_dir
    from d2v.workflows.sample_data import write_pretraining_data

    data_dir = Path(opts.data_dir) if opts.data_dir else sample_data_dir()
    jobs = []
    for modality in todo:
        run_dir = work / f"run-{modality}"
        run_dir.mkdir()
        data = write_pretraining_data(modality, data_dir, work / "data")
        cmd, steps = train_command(modality, opts, data, run_dir)
        jobs.append(_Job(modality, run_dir, steps, run_dir / "quickstart.log", cmd))
    return jobs


def _run_jobs(jobs: list[_Job], opts: QuickstartOptions) -> dict[str, dict[str, Any]]:
    """Train ``opts.jobs`` at a time (one bar per model), export + install each as it ends; modality -> info.

    A failed training raises; whatever is still running is then terminated (the store keeps what it had).
    """
    jobs_at_once = opts.jobs or default_jobs(len(jobs))
    bars = _progress_bars(jobs, opts.progress)
    pending, running, built = list(jobs), [], {}
    try:
        while pending or running:
            while pending and len(running) < jobs_at_once:
                running.append(_start(pending.pop(0), opts))
            for job in list(running):
                bar = bars[job.modality]
                if not _poll(job, bar):
                    continue
                running.remove(job)
                bar.update(job.steps - bar.n)
                bar.set_postfix_str("exporting")
                info = built[job.modality] = _finish(job, opts)
                bar.set_postfix_str(f"done: {info['train_seconds']:.0f} s + export {info['export_seconds']:.0f} s")
            time.sleep(0.25)
    finally:
        for job in jobs:
            if job.proc is not None and job.proc.poll() is None:
                job.proc.terminate()
                job.proc.wait()
        for bar in bars.values():
            bar.close()
    return built


def _progress_bars(jobs: Sequence[_Job], progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    width = max(len(DEFAULT_MODEL_NAMES[j.modality]) for j in jobs)
    return {
        j.modality: tqdm(
            total=j.steps,
            desc=DEFAULT_MODEL_NAMES[j.modality].ljust(width),
            unit="step",
            position=i,
            leave=True,
            disable=not progress,
            dynamic_ncols=True,
        )
        for i, j in enumerate(jobs)
    }


def _start(job: _Job, opts: QuickstartOptions) -> _Job:
    """Start the job's ``d2v train`` child, logging to ``job.log``."""
    with job.log.open("w") as fh:
        fh.write(f"$ {' '.join(job.cmd)}\n")
        fh.flush()
        job.proc = subprocess.Popen(job.cmd, stdout=fh, stderr=subprocess.STDOUT, env=_child_env(opts.threads))
    job.started = time.perf_counter()
    return job


def _poll(job: _Job, bar: Any) -> bool:
    """Move the bar to the run's last logged step; True once training has exited (raises if it failed)."""
    step = int(_last_metrics(job.run_dir / "metrics.jsonl").get("step", 0))
    if step > bar.n:
        bar.update(step - bar.n)
    bar.set_postfix_str("pretraining", refresh=False)
    rc = job.proc.poll()
    if rc is None:
        return False
    job.train_seconds = time.perf_counter() - job.started
    if rc:
        raise D2VError(f"training {DEFAULT_MODEL_NAMES[job.modality]} failed (exit status {rc}):\n{_tail(job.log)}")
    return True


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
