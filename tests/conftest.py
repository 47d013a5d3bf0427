"""Session fixtures shared by every test folder: the model-store test kit, tiny checkpoints, their exports,
ONE Triton repository with all three modalities, and a real ``tritonserver`` serving it on loopback.

Everything is built lazily (only when a test asks) and once per session. Helpers live in
``triton_fixtures.py``, registered here under that module name (``--import-mode=importlib`` puts no test
folder on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _register(name: str) -> object:
    """Load ``tests/<name>.py`` as module ``name`` (once), so every test folder can ``from <name> import``."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


tf = _register("triton_fixtures")
testkit = _register("testkit")  # tiny contract-following ONNX models, settings, ASGI and live servers


def _load_fairseq_oracle() -> object:
    """tests/models/fairseq_oracle/client.py as module ``fairseq_oracle`` (fairseq runs in .venv-fairseq)."""
    if "fairseq_oracle" not in sys.modules:
        path = Path(__file__).parent / "models" / "fairseq_oracle" / "client.py"
        spec = importlib.util.spec_from_file_location("fairseq_oracle", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["fairseq_oracle"] = module
        spec.loader.exec_module(module)
    return sys.modules["fairseq_oracle"]


@pytest.fixture(scope="session")
def fairseq_oracle() -> object:
    """fairseq as a test oracle (tests/models/fairseq_oracle/README.md); builds .venv-fairseq on first use
    (scripts/setup_fairseq.sh, ~5 min once) and skips only when that is impossible here."""
    oracle = _load_fairseq_oracle()
    reason = oracle.ensure_env()
    if reason:
        pytest.skip(reason)
    return oracle


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store with one tiny contract-following ONNX model per modality (no torch needed)."""
    root = tmp_path_factory.mktemp("store")
    for modality in ("text", "audio", "image"):
        testkit.write_model(root, modality)
    return root


@pytest.fixture(scope="session")
def d2v_export_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("d2v-export")


@pytest.fixture(scope="session")
def tiny_checkpoints(d2v_export_root) -> dict[str, Path]:
    pytest.importorskip("torch")
    root = d2v_export_root / "checkpoints"
    root.mkdir()
    return {m: tf.make_checkpoint(m, root) for m in tf.MODALITIES}


@pytest.fixture(scope="session")
def tiny_exports(d2v_export_root, tiny_checkpoints) -> dict[str, Path]:
    """Each modality exported once (fp32 + variants + fusion check) into the store ``<root>/exports``."""
    pytest.importorskip("onnxruntime")
    return tf.export_all(tiny_checkpoints, d2v_export_root / "exports")


@pytest.fixture(scope="session")
def triton_repo(d2v_export_root, tiny_exports) -> Path:
    return tf.write_triton_repo(tiny_exports, d2v_export_root / "triton_repo")


@pytest.fixture(scope="session")
def triton_server(triton_repo):
    """The whole repository served by a real tritonserver; stopped with SIGTERM at the end of the session.
    Tests that stop Triton on purpose start their own (``triton_fixtures.start_triton``)."""
    reason = tf.triton_skip_reason()
    if reason:
        pytest.skip(reason)
    server = tf.start_triton(triton_repo)
    try:
        yield server
    finally:
        server.stop()
