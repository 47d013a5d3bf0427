"""The dependency rules of docs/architecture.md: the serving path and the client SDK never import torch
(nor the training or export packages), checked in a fresh interpreter."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import d2v

REPO = Path(__file__).resolve().parents[1]


def _modules_under(package: str) -> list[str]:
    mod = __import__(package, fromlist=["_"])
    return (
        [package]
        + [f"{package}.{m.name}" for m in pkgutil.walk_packages(mod.__path__) if not m.ispkg]
        + [f"{package}.{m.name}" for m in pkgutil.walk_packages(mod.__path__) if m.ispkg]
    )


def _imported_after(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    import json

    return set(json.loads(out.stdout.strip().splitlines()[-1]))


TORCH_FREE = ["d2v.server", "d2v.models.preprocessing", "d2v.extract", "d2v_client"]
FORBIDDEN = ("torch", "d2v.training", "transformers")


@pytest.mark.parametrize("package", TORCH_FREE)
def test_serving_path_is_torch_free(package):
    try:
        modules = _modules_under(package)
    except ModuleNotFoundError:
        pytest.fail(f"{package} is not importable")
    # Optional-extra modules (ray, tritonclient) may be absent; everything else must import torch-free.
    loaded = _imported_after(modules)
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN or m.startswith("d2v.training"))
    assert not bad, f"{package} pulled in {bad[:10]}"


def test_cli_starts_without_torch():
    loaded = _imported_after(["d2v.cli"])
    code = "from d2v.cli import build_parser; build_parser()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert "torch" not in loaded


def test_client_sdk_imports_no_project_package():
    loaded = _imported_after(["d2v_client"])
    assert not any(m == "d2v" or m.startswith("d2v.") for m in loaded)
    assert "torch" not in loaded and "onnxruntime" not in loaded


def test_package_is_d2v():
    assert Path(d2v.__file__).parent == REPO / "d2v"
