"""Training checkpoints: the project checkpoint (what export/serve read) plus the resume-only train state.

Layout of ``RUN/checkpoints/``::

    step_00000100/
        model.safetensors, config.json, [tokenizer.json]   # d2v.models.checkpoint.save_checkpoint (student)
        train_state.pt                                      # resume only: optimizer, scheduler, EMA teacher,
                                                            # heads/decoder, RNG states, data position, step
    latest -> step_00000100      best -> step_000000xx      # relative symlinks (+ latest.json / best.json)

Each step directory is written under a temporary name and renamed into place (atomic on one filesystem);
the symlinks are replaced atomically too. ``keep_last`` step directories are kept, plus the best one.
``train_state.pt`` holds only tensors and plain Python values, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from d2v.core.errors import NotFound

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"
STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may touch (dropout, layerdrop, ...), as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def save_training_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    preprocessing: Any,
    embedding: Any,
    train_state: dict[str, Any],
    tokenizer_json: str | Path | None = None,
    source: dict[str, Any] | None = None,
    keep_last: int = 2,
    metric: float | None = None,
) -> Path:
    """Write ``root/step_XXXXXXXX`` atomically, move ``latest`` (and ``best`` when ``metric`` improves), prune.

    Args:
        root: the run's checkpoint directory.
        step: optimizer steps done.
        model: the unwrapped student ``Data2VecModel`` (no DDP wrapper, no heads).
        preprocessing / embedding / tokenizer_json / source: as ``d2v.models.checkpoint.save_checkpoint``.
        train_state: the resume-only state (tensors and plain values).
        keep_last: step directories to keep (the best one is kept in addition).
        metric: lower is better; the step becomes ``best`` when it beats ``best.json``.
    """
    from d2v.models.checkpoint import save_checkpoint

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_checkpoint(tmp, model, preprocessing, embedding, tokenizer_json=tokenizer_json, source=source)
    state_tmp = tmp / f".{TRAIN_STATE}.tmp"
    torch.save(train_state, state_tmp)
    os.replace(state_tmp, tmp / TRAIN_STATE)
    if final.exists():  # re-saving a step (e.g. resumed and stopped at the same step)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _replace_symlink(root / "latest", final.name)
    _write_json_atomic(root / "latest.json", {"step": step, "path": final.name})

    best = read_pointer(root / "best.json")
    if metric is not None and (best is None or metric < best.get("metric", float("inf"))):
        _replace_symlink(root / "best", final.name)
        _write_json_atomic(root / "best.json", {"step": step, "path": final.name, "metric": metric})
        best = {"path": final.name}
    keep = {p for _, p in list_step_dirs(root)[-keep_last:]}
    if best is not None:
        keep.add(root / best["path"])
    for _, path in list_step_dirs(root):
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    return final


def read_pointer(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def resolve_resume(path: str | Path) -> Path:
    """A step directory, a run's ``checkpoints`` directory or a run directory -> the step directory to resume."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / TRAIN_STATE).is_file():
            return candidate
        latest = read_pointer(candidate / "latest.json")
        if latest is not None and (candidate / latest["path"] / TRAIN_STATE).is_file():
            return candidate / latest["path"]
        steps = [p for _, p in list_step_dirs(candidate) if (p / TRAIN_STATE).is_file()]
        if steps:
            return steps[-1]
    raise NotFound(f"--resume: no training checkpoint (with {TRAIN_STATE}) found under {path}")


def load_train_state(step_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(step_dir / TRAIN_STATE, map_location=map_location, weights_only=True)


def load_model_weights(step_dir: Path, model: torch.nn.Module) -> None:
    """Load ``model.safetensors`` into the live student (strict), the exact tensors that were saved."""
    from safetensors.torch import load_file

    state = load_file(str(step_dir / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise NotFound(
            f"--resume: {step_dir} does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
