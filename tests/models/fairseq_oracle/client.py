"""Test-side API of the fairseq oracle: run fairseq code in ``.venv-fairseq`` from a pytest test and get
tensors back. ``tests/conftest.py`` loads this module (as ``fairseq_oracle``) and offers it as the session
fixture ``fairseq_oracle`` (the environment is built on first use; tests skip only if that is impossible).
Exchange is by files in a work directory: a JSON request, tensors in safetensors files, never pickles.
See ``README.md`` beside this file.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[3]
ENV = REPO_ROOT / ".venv-fairseq"
PYTHON = ENV / "bin" / "python"
SETUP = REPO_ROOT / "scripts" / "setup_fairseq.sh"
HARNESS = Path(__file__).with_name("harness.py")

# Small random models of each kind (fairseq cfg.model overrides), built in well under a second. Dropouts are
# left at fairseq's defaults: the oracle runs in eval mode.
_TINY_V2 = {"depth": 2, "embed_dim": 32, "num_heads": 4, "average_top_k_layers": 2, "norm_eps": 1e-5}
TINY: dict[str, dict[str, Any]] = {
    "audio_v1": {
        "encoder_layers": 3,
        "encoder_embed_dim": 32,
        "encoder_ffn_embed_dim": 64,
        "encoder_attention_heads": 4,
        "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 2 + [(16, 2, 2)]",
        "extractor_mode": "layer_norm",
        "conv_pos": 10,
        "pos_conv_depth": 2,
        "conv_pos_groups": 4,
        "average_top_k_layers": 2,
        "instance_norm_target_layer": True,
    },
    "text_v1": {
        "transformer": {
            "activation_fn": "gelu",
            "layernorm_embedding": True,
            "no_scale_embedding": True,
            "max_source_positions": 64,
            "encoder": {"embed_dim": 32, "ffn_embed_dim": 64, "layers": 3, "attention_heads": 4, "learned_pos": True},
        },
        "head_layers": 2,
        "average_top_k_layers": 2,
        "layer_norm_target_layer": True,
    },
    "audio_v2": {
        **_TINY_V2,
        "ema_encoder_only": False,
        "instance_norm_target_layer": True,
        "modalities": {
            "audio": {
                "feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 2 + [(16, 2, 2)]",
                "conv_pos_depth": 2,
                "conv_pos_width": 10,
                "conv_pos_groups": 4,
                "prenet_depth": 1,
                "use_alibi_encoder": True,
                "learned_alibi_scale": True,
                "learned_alibi_scale_per_head": True,
            }
        },
    },
    "image_v2": {
        **_TINY_V2,
        "norm_eps": 1e-6,
        "ema_encoder_only": False,
        "instance_norm_target_layer": True,
        "layer_norm_targets": True,
        "modalities": {
            "image": {
                "input_size": 32,
                "patch_size": 8,
                "embed_dim": 32,
                "prenet_depth": 1,
                "num_extra_tokens": 1,
                "init_extra_token_zero": False,
                "ema_local_encoder": True,
            }
        },
    },
    "text_v2": {
        **_TINY_V2,
        "ema_encoder_only": True,
        "instance_norm_target_layer": True,
        "modalities": {"text": {"max_source_positions": 64, "prenet_depth": 0}},
    },
}
TASKS = {"audio_v1": {"normalize": True}, "audio_v2": {"normalize": True}}


def tiny(kind: str, **overrides: Any) -> dict[str, Any]:
    """``TINY[kind]`` with ``overrides`` merged in (nested dicts merge, e.g. ``modalities={"text": {...}}``)."""

    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return out

    return merge(TINY[kind], overrides)


def skip_reason() -> str | None:
    """Why the oracle cannot run (``None`` when it can)."""
    if not PYTHON.exists():
        return f"no fairseq environment at {ENV} (scripts/setup_fairseq.sh)"
    return None


def ensure_env(timeout: float = 1800.0) -> str | None:
    """Build ``.venv-fairseq`` with scripts/setup_fairseq.sh (idempotent; quick when it exists). Returns why
    it is unusable, or ``None``."""
    try:
        proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not build {ENV}: {exc}"
    if proc.returncode != 0:
        return f"scripts/setup_fairseq.sh failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}"
    return skip_reason()


class _Server:
    """One ``harness.py --serve`` process (fairseq imported once), fed request paths on stdin."""

    def __init__(self) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="fairseq-oracle-", suffix=".log", delete=False)  # noqa: SIM115
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(
            [str(PYTHON), str(HARNESS), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        atexit.register(self.close)

    def ask(self, request_path: Path, timeout: float) -> str:
        """``ok`` or ``error``; raises when the process died or did not answer within ``timeout``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{request_path}\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"fairseq oracle exited ({self.proc.poll()}):\n{self.log_tail()}")
            if line.startswith(DONE):
                return line.split()[-1]
        tail = self.log_tail()
        self.close()
        raise RuntimeError(f"fairseq oracle gave no answer within {timeout:.0f} s:\n{tail}")

    def log_tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        Path(self.log.name).unlink(missing_ok=True)


DONE = "@@fairseq-oracle@@"
_server: _Server | None = None


def run(
    command: str, params: dict[str, Any], inputs: dict[str, Any] | None = None, *, timeout: float = 300.0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run one harness command in ``.venv-fairseq``; inputs/outputs are arrays (numpy or torch) by name."""
    global _server
    from safetensors.numpy import load_file, save_file

    if _server is None or _server.proc.poll() is not None:
        _server = _Server()
    with tempfile.TemporaryDirectory(prefix="fairseq-oracle-") as tmp:
        work = Path(tmp)
        request: dict[str, Any] = {
            "command": command,
            "params": params,
            "result": str(work / "result.json"),
            "outputs": str(work / "outputs.safetensors"),
        }
        if inputs:
            arrays = {k: np.ascontiguousarray(_numpy(v)) for k, v in inputs.items()}
            save_file(arrays, str(work / "inputs.safetensors"))
            request["inputs"] = str(work / "inputs.safetensors")
        (work / "request.json").write_text(json.dumps(request))
        status = _server.ask(work / "request.json", timeout)
        result = json.loads((work / "result.json").read_text())
        if status != "ok":
            raise RuntimeError(f"fairseq oracle {command!r} failed:\n{result.get('__error__', result)}")
        outputs = load_file(request["outputs"]) if Path(request["outputs"]).exists() else {}
    return result, outputs


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# ------------------------------------------------------------------------------------------ conveniences
def build_checkpoint(
    kind: str,
    path: Path,
    *,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    dict_path: Path | None = None,
    cfg_format: str = "omegaconf",
    legacy: bool = False,
    perturb_teacher: bool = True,
) -> dict[str, Any]:
    """Write a REAL fairseq checkpoint of a random ``kind`` model (``TINY[kind]`` unless ``overrides``) at
    ``path``, as fairseq's trainer does (``cfg``, ``model`` with ``_ema``). The stored EMA teacher is
    perturbed so it differs from the student."""
    params = {
        "kind": kind,
        "path": str(path),
        "overrides": TINY[kind] if overrides is None else overrides,
        "task": TASKS.get(kind, {}),
        "seed": seed,
        "dict_path": str(dict_path) if dict_path else None,
        "cfg_format": cfg_format,
        "legacy": legacy,
        "perturb_teacher": perturb_teacher,
    }
    return run("build", params)[0]


def forward(
    kind: str,
    path: Path,
    source: Any,
    padding_mask: Any = None,
    *,
    teacher: bool = False,
    dict_path: Path | None = None,
    precomputed_mask: Any = None,
    each_alone: bool = False,
) -> dict[str, np.ndarray]:
    """fairseq's inference forward of the checkpoint at ``path`` (``extract_features``, mask off; with
    ``precomputed_mask`` (v2) the masked tokens are removed as in pretraining). Returns ``x`` and every
    block's ``block_{i}`` / ``ffn_{i}`` output, batch-first (v2: prenet blocks first, extra tokens kept).
    ``each_alone`` runs every row by itself, cut to its real length, and pads the results back together."""
    inputs = {"source": source}
    if padding_mask is not None:
        inputs["padding_mask"] = padding_mask
    if precomputed_mask is not None:
        inputs["precomputed_mask"] = precomputed_mask
    params = {"kind": kind, "path": str(path), "teacher": teacher, "each_alone": each_alone}
    params["dict_path"] = str(dict_path) if dict_path else None
    return run("forward", params, inputs)[1]


def build_all(root: Path, kinds: tuple[str, ...] = tuple(TINY)) -> dict[str, Path]:
    """``write_gpt2_files(root / "bpe")`` and one checkpoint per kind (``<root>/<kind>.pt``, seed 0); the
    BPE folder is returned under ``"bpe"`` (text checkpoints use its ``dict.txt``)."""
    bpe = write_gpt2_files(root / "bpe")
    paths = {"bpe": bpe}
    for kind in kinds:
        paths[kind] = root / f"{kind}.pt"
        build_checkpoint(kind, paths[kind], dict_path=bpe / "dict.txt" if kind.startswith("text") else None)
    return paths


def encode_text(texts: list[str], dict_dir: Path) -> list[list[int]]:
    """fairseq's own ids for ``texts`` (GPT-2 BPE + ``dict.txt``, ``<s> ... </s>``)."""
    params = {
        "texts": texts,
        "encoder_json": str(dict_dir / "encoder.json"),
        "vocab_bpe": str(dict_dir / "vocab.bpe"),
        "dict_path": str(dict_dir / "dict.txt"),
    }
    return run("encode_text", params)[0]["ids"]


CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "data2vec learns contextualized targets for speech, vision and language",
    "héllo wörld, café naïve façade — déjà vu",
    "日本語のテキストと中文的句子",
    "emoji 🎉🚀 and symbols ©®™ 12345 3.14",
    "tabs\tand\nnewlines   and   runs of spaces",
] * 10


def write_gpt2_files(folder: Path, *, vocab_size: int = 400, drop: int = 0, seed: int = 0) -> Path:
    """A small GPT-2-format BPE (``encoder.json`` + ``vocab.bpe``, trained on ``CORPUS``) and a fairseq
    ``dict.txt`` listing the GPT-2 ids in a shuffled (frequency-like) order, three ``madeupword`` fillers at
    the end as fairseq's padding to a multiple of 8 leaves them; ``drop`` leaves the last few merged tokens
    out of the dictionary (fairseq maps them to ``<unk>``)."""
    import json

    from tokenizers import ByteLevelBPETokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1, show_progress=False)
    bpe.save_model(str(folder))
    (folder / "vocab.json").replace(folder / "encoder.json")
    (folder / "merges.txt").replace(folder / "vocab.bpe")
    encoder = json.loads((folder / "encoder.json").read_text())
    ids = sorted(encoder.values())
    kept = ids[: len(ids) - drop] if drop else ids
    order = np.random.default_rng(seed).permutation(len(kept))
    lines = [f"{kept[i]} {1000 - n}" for n, i in enumerate(order)]
    lines += [f"madeupword{n:04d} 0" for n in range(3)]
    (folder / "dict.txt").write_text("\n".join(lines) + "\n")
    return folder


def call(file: Path, function: str, inputs: dict[str, Any] | None = None, params: dict[str, Any] | None = None):
    """Run ``function(harness, inputs, params)`` from ``file`` inside ``.venv-fairseq``: ``harness`` is the
    oracle module (``harness.setup()`` gives fairseq's classes, ``harness.build`` / ``load`` /
    ``extract_layers`` the models), ``inputs`` torch tensors. It returns a dict: tensors come back as numpy
    arrays, other (JSON-able) values as the result dict. Returns ``(result, arrays)``."""
    return run("call", {"file": str(file), "function": function, "params": params or {}}, inputs)


if __name__ == "__main__":  # a quick manual check: python client.py
    print(skip_reason() or "fairseq oracle environment present", file=sys.stderr)
