"""Session fixtures: tiny checkpoints per modality, their exports (cached), a Triton repository and a real
``tritonserver`` (from ``.venv-triton``) serving it on free loopback ports, stopped with SIGTERM."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TRITON_ENV = REPO_ROOT / ".venv-triton"
MODALITIES = ("text", "audio", "image")

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from tiny import make_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def export_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("d2v-export")


@pytest.fixture(scope="session")
def checkpoints(export_root) -> dict[str, Path]:
    root = export_root / "checkpoints"
    root.mkdir()
    return {m: make_checkpoint(m, root) for m in MODALITIES}


def _variants() -> list[str]:
    from d2v.export.variants import cpu_has_bf16

    return ["fp16", "int8", *(["bf16"] if cpu_has_bf16() else [])]


@pytest.fixture(scope="session")
def exports(export_root, checkpoints) -> dict[str, Path]:
    """Each modality exported once (fp32 + variants + fusion check); shared by the tests that only read."""
    from d2v.export.exporter import ExportOptions, export_onnx

    out = {}
    for m in MODALITIES:
        path = export_root / "exports" / f"tiny_{m}"
        export_onnx(checkpoints[m], path, ExportOptions(name=f"tiny_{m}", variants=_variants()))
        out[m] = path
    return out


@pytest.fixture(scope="session")
def triton_repo(export_root, exports) -> Path:
    """One repository holding all three modalities (python-backend encoders: the bundled server has no ORT backend)."""
    from d2v.export.triton_repo import TritonRepoOptions, write_repository

    repo = export_root / "triton_repo"
    for m in MODALITIES:
        write_repository(exports[m], repo, TritonRepoOptions(preprocess_instances=1, intra_op_threads=1))
    return repo


def triton_env_reason() -> str | None:
    if not (TRITON_ENV / "bin" / "python").exists():
        return f"no Triton environment at {TRITON_ENV} (create it with scripts/setup_triton.sh)"
    if not list(TRITON_ENV.glob("lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver")):
        return f"{TRITON_ENV} has no nvidia-pytriton tritonserver binary"
    return None


@pytest.fixture(scope="session")
def triton_server(triton_repo):
    reason = triton_env_reason()
    if reason:
        pytest.skip(reason)
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed in the test environment")
    from d2v.export.triton_launch import TritonEnv, TritonServer

    server = TritonServer(triton_repo, TritonEnv(TRITON_ENV))
    server.start(timeout=120)
    try:
        yield server
    finally:
        server.stop()
