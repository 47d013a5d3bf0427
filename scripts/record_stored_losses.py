#!/usr/bin/env python
"""Re-record ``tests/training/stored_losses.json``: the first 20 losses of each tiny recipe (seeded, CPU, 1 thread).

    .venv/bin/python scripts/record_stored_losses.py                       # all six recipes
    .venv/bin/python scripts/record_stored_losses.py --only tiny-image-v2  # some; the others are kept

Run it only when a change of the training numbers is intended: the stored losses are what
``tests/training/test_stored_losses.py`` holds every later change to. The runs go through that test module's
``run_recipe_losses`` (imported by file path), so the script and the test cannot drift apart.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from d2v.runtime.selection import host_fingerprint

REPO = Path(__file__).resolve().parents[1]
TEST_MODULE = REPO / "tests" / "training" / "test_stored_losses.py"


def load_test_module():
    # Tests are imported in importlib mode (no package, no sys.path entry): load the file itself.
    spec = importlib.util.spec_from_file_location("test_stored_losses", TEST_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_commit() -> str:
    """The commit of the code that was run (the installed ``d2v.training``, which may be another checkout)."""
    import d2v.training.config as config

    where = Path(config.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=where, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def recorded_with() -> dict[str, str]:
    import numpy
    import tokenizers
    import torch

    return {
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
        "cpu": host_fingerprint()["cpu"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "code_commit": code_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    tests = load_test_module()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=tests.RECIPES, help="re-record these recipes, keep the others")
    parser.add_argument("--out", type=Path, default=tests.STORED, help="default: %(default)s")
    args = parser.parse_args(argv)

    stored = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.only or tests.RECIPES:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"d2v-{name}-") as tmp:
            losses = tests.run_recipe_losses(name, tests.OVERRIDES, Path(tmp))
        stored[name] = {"overrides": list(tests.OVERRIDES), "losses": losses}
        print(
            f"{name}: {len(losses)} losses, {losses[0]:.6g} -> {losses[-1]:.6g} ({time.perf_counter() - start:.1f} s)"
        )
        sys.stdout.flush()
    stored["recorded_with"] = recorded_with()
    ordered = {"recorded_with": stored.pop("recorded_with"), **{k: stored[k] for k in sorted(stored)}}
    args.out.write_text(json.dumps(ordered, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
