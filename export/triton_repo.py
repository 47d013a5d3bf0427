"""``d2v export --format triton``: a Triton model repository from an exported model directory.

For a model named ``<name>`` (one modality) it writes::

    REPO/
      <name>/                      ensemble: raw_input (BYTES [B,1]) -> d2v_* embeddings
        config.pbtxt
        1/                         (empty: Triton wants a version dir)
      <name>_preprocess/           python backend: bytes / UTF-8 -> encoder tensors (torch-free d2v code)
        config.pbtxt
        1/model.py  1/preprocessing.json  1/tokenizer.json (text)  1/d2v/{core/, models/preprocessing/}
        warmup/sample
      <name>_encoder/              onnxruntime backend | tensorrt_plan | python backend running ORT
        config.pbtxt
        1/model.onnx (+ model.onnx.data) | 1/model.plan, 1/model.json, 1/parity.json [, 1/model.py]
        warmup/*.bin

The names come from the manifest (``ModelManifest.triton``), the tensor names and axes from its
``inputs`` / ``outputs`` (which export checked against the real ONNX graph): one source for both.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from d2v.core.contract import INPUT_NAMES, TOP_K_INPUT, InputSpec, synthetic_inputs, warmup_lengths
from d2v.core.errors import ConfigError
from d2v.core.manifest import ModelManifest
from d2v.export.triton_config import (
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    ModelConfig,
    QueuePolicy,
    Tensor,
    Warmup,
    WarmupInput,
    triton_dtype,
)

TEMPLATES = Path(__file__).parent / "triton_models"
EncoderBackend = Literal["python", "onnxruntime", "tensorrt"]


@dataclass
class TritonRepoOptions:
    encoder_backend: EncoderBackend = "python"
    variant: str | None = None  # ONNX variant served by the encoder (default: the manifest's default)
    max_batch_size: int | None = None  # default: the manifest's
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [4, 8, 16])
    max_queue_delay_us: int = 2000
    max_queue_size: int = 1024
    queue_timeout_us: int = 5_000_000
    instance_kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    encoder_instances: int = 1
    preprocess_instances: int = 2
    intra_op_threads: int = 0  # python encoder: ORT threads per instance (0 = ORT default)
    warmup_batch_size: int = 1
    warmup_length: int = 16  # tokens (text) / samples per second x 1 s (audio uses the sample rate)
    plan_file: Path | None = None  # tensorrt: a built engine to ship as model.plan

    def validate(self, max_batch: int) -> None:
        if self.encoder_backend not in ("python", "onnxruntime", "tensorrt"):
            raise ConfigError(f"unknown Triton encoder backend {self.encoder_backend!r}")
        if self.encoder_backend == "tensorrt" and (self.plan_file is None or not Path(self.plan_file).is_file()):
            raise ConfigError("a tensorrt_plan encoder needs a built engine (d2v export --format tensorrt first)")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= max_batch]
        if bad:
            raise ConfigError(f"preferred batch sizes {bad} outside [1, max_batch_size={max_batch}]")
        if self.max_queue_size < 1 or self.queue_timeout_us < 1 or self.max_queue_delay_us < 0:
            raise ConfigError("queue size and timeout must be positive, queue delay non-negative")


def _dims(shape: list[int | str]) -> list[int]:
    """Manifest shape (batch first) -> Triton dims without the batch axis; symbolic axes -> -1."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def _tensors(specs: dict, names=None) -> list[Tensor]:
    names = names or list(specs)
    return [
        Tensor(n, triton_dtype(specs[n].dtype), [1] if n == TOP_K_INPUT else _dims(specs[n].shape), n == TOP_K_INPUT)
        for n in names
    ]


def _queue(opts: TritonRepoOptions, preferred: bool) -> DynamicBatching:
    return DynamicBatching(
        preferred_batch_size=list(opts.preferred_batch_sizes) if preferred else [],
        max_queue_delay_microseconds=opts.max_queue_delay_us,
        queue_policy=QueuePolicy(
            max_queue_size=opts.max_queue_size, default_timeout_microseconds=opts.queue_timeout_us
        ),
    )


# ------------------------------------------------------------------------------------------- warm-up data
def _sample_raw(modality: str, pre: dict) -> bytes:
    """One small valid raw input, used to warm the preprocessing model up."""
    if modality == "text":
        return b"Triton warm-up sentence."
    if modality == "image":
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (120, 30, 200)).save(buf, format="PNG")
        return buf.getvalue()
    import soundfile as sf

    rate = int(pre.get("sample_rate", 16000))
    t = np.arange(rate // 2) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def _encoder_warmup(m: ModelManifest, opts: TritonRepoOptions, warmup_dir: Path) -> list[Warmup]:
    """One synthetic sample (the contract's builder), as files: Triton repeats it ``warmup_batch_size`` times."""
    warmup_dir.mkdir(parents=True, exist_ok=True)
    spec = InputSpec.from_manifest(m)
    length = opts.warmup_length if m.modality == "text" else warmup_lengths(spec, batch=1)[0]
    sample = synthetic_inputs(spec, [length], seed=0)
    inputs = []
    for name in INPUT_NAMES[m.modality]:
        data = sample[name][0].astype(m.inputs[name].dtype)
        (warmup_dir / f"{name}.bin").write_bytes(data.tobytes())
        dims = list(data.shape)
        inputs.append(WarmupInput(name, triton_dtype(m.inputs[name].dtype), dims, "input_data_file", f"{name}.bin"))
    return [Warmup(f"b{opts.warmup_batch_size}", opts.warmup_batch_size, inputs)]


# ------------------------------------------------------------------------------------------------ models
def _copy_variant(model_dir: Path, m: ModelManifest, variant: str, dest: Path) -> str:
    src = m.variant_file(model_dir, variant)
    shutil.copy2(src, dest / src.name)
    data = src.with_name(src.name + ".data")
    if data.exists():
        shutil.copy2(data, dest / data.name)
    _copy_metadata(model_dir, dest)
    return src.name


def _copy_metadata(model_dir: Path, dest: Path) -> None:
    """``model.json`` and ``parity.json`` travel with every encoder version directory."""
    for extra in ("model.json", "parity.json"):
        if (model_dir / extra).exists():
            shutil.copy2(model_dir / extra, dest / extra)


def _encoder(m: ModelManifest, model_dir: Path, repo: Path, opts: TritonRepoOptions, max_batch: int) -> ModelConfig:
    name = m.triton.encoder
    version = repo / name / "1"
    version.mkdir(parents=True)
    variant = opts.variant or m.default_variant
    in_names = list(m.inputs) if opts.encoder_backend == "python" else [n for n in m.inputs if n != TOP_K_INPUT]
    kind, backend, platform, filename, params = opts.instance_kind, "", "", "", {}
    if opts.encoder_backend == "tensorrt":
        shutil.copy2(opts.plan_file, version / "model.plan")
        _copy_metadata(model_dir, version)
        platform, kind = "tensorrt_plan", "KIND_GPU"
    else:
        onnx_file = _copy_variant(model_dir, m, variant, version)
        if opts.encoder_backend == "onnxruntime":
            backend, filename = "onnxruntime", onnx_file
        else:
            backend = "python"
            shutil.copy2(TEMPLATES / "encoder.py", version / "model.py")
            params = {"onnx_file": onnx_file, "intra_op_threads": str(opts.intra_op_threads)}
    return ModelConfig(
        name=name,
        backend=backend,
        platform=platform,
        default_model_filename=filename,
        inputs=_tensors(m.inputs, in_names),
        outputs=_tensors(m.outputs),
        max_batch_size=max_batch,
        dynamic_batching=_queue(opts, preferred=True),
        instance_group=[InstanceGroup(kind, opts.encoder_instances)],
        warmup=_encoder_warmup(m, opts, repo / name / "warmup"),
        parameters=params,
    )


def _ship_preprocessing_code(dest: Path) -> None:
    """Copy the torch-free preprocessing package and the core it stands on into ``dest/d2v/``."""
    import d2v.core
    import d2v.models.preprocessing as pre

    pkg = dest / "d2v"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Shipped subset of d2v for the Triton python backend."""\n')
    (pkg / "models" / "__init__.py").write_text('"""Shipped subset: preprocessing only."""\n')
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(d2v.core.__file__).parent, pkg / "core", ignore=skip)
    shutil.copytree(Path(pre.__file__).parent, pkg / "models" / "preprocessing", ignore=skip)


def _preprocess(m: ModelManifest, model_dir: Path, repo: Path, opts: TritonRepoOptions, max_batch: int) -> ModelConfig:
    name = m.triton.preprocess
    version = repo / name / "1"
    version.mkdir(parents=True)
    shutil.copy2(TEMPLATES / "preprocess.py", version / "model.py")
    (version / "preprocessing.json").write_text(json.dumps(m.preprocessing, indent=2) + "\n")
    if m.modality == "text":
        tok = m.preprocessing.get("tokenizer_file", "tokenizer.json")
        if not (model_dir / tok).is_file():
            raise ConfigError(f"text model {m.name!r}: tokenizer file {tok!r} missing from {model_dir}")
        shutil.copy2(model_dir / tok, version / tok)
    _ship_preprocessing_code(version)
    (repo / name / "warmup").mkdir()
    raw = _sample_raw(m.modality, m.preprocessing)
    (repo / name / "warmup" / "sample").write_bytes(len(raw).to_bytes(4, "little") + raw)
    raw_input = Tensor(m.triton.raw_input, "TYPE_STRING", [1])
    return ModelConfig(
        name=name,
        backend="python",
        inputs=[raw_input],
        outputs=_tensors(m.inputs, INPUT_NAMES[m.modality]),
        max_batch_size=max_batch,
        dynamic_batching=_queue(opts, preferred=False),
        instance_group=[InstanceGroup("KIND_CPU", opts.preprocess_instances)],
        warmup=[Warmup("sample", 1, [WarmupInput(raw_input.name, "TYPE_STRING", [1], "input_data_file", "sample")])],
        parameters={"preprocessing_file": "preprocessing.json"},
    )


def _ensemble(m: ModelManifest, repo: Path, max_batch: int) -> ModelConfig:
    name = m.triton.ensemble
    (repo / name / "1").mkdir(parents=True)
    inputs = INPUT_NAMES[m.modality]
    return ModelConfig(
        name=name,
        platform="ensemble",
        inputs=[Tensor(m.triton.raw_input, "TYPE_STRING", [1])],
        outputs=_tensors(m.outputs),
        max_batch_size=max_batch,
        ensemble_steps=[
            EnsembleStep(
                m.triton.preprocess,
                {m.triton.raw_input: m.triton.raw_input},
                {n: f"_pre_{n}" for n in inputs},
            ),
            EnsembleStep(m.triton.encoder, {n: f"_pre_{n}" for n in inputs}, {n: n for n in m.outputs}),
        ],
    )


def write_repository(model_dir: str | os.PathLike, repo_dir: str | os.PathLike, opts: TritonRepoOptions | None = None):
    """Write (or extend) the Triton repository ``repo_dir`` for the exported model in ``model_dir``.

    Atomic per model name: everything is built in a temp dir beside ``repo_dir`` and renamed into place;
    existing model directories of the same names are refused (pass a fresh or different repository).
    Returns the list of ``ModelConfig`` written.
    """
    opts = opts or TritonRepoOptions()
    model_dir, repo = Path(model_dir), Path(repo_dir)
    m = ModelManifest.load(model_dir)
    max_batch = opts.max_batch_size or m.max_batch_size
    opts.validate(max_batch)
    names = [m.triton.ensemble, m.triton.preprocess, m.triton.encoder]
    clash = [n for n in names if (repo / n).exists()]
    if clash:
        raise ConfigError(f"{repo} already holds model(s) {clash}; remove them or write to another repository")
    repo.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".d2v-triton-", dir=repo))
    try:
        configs = [
            _encoder(m, model_dir, tmp, opts, max_batch),
            _preprocess(m, model_dir, tmp, opts, max_batch),
            _ensemble(m, tmp, max_batch),
        ]
        for cfg in configs:
            (tmp / cfg.name / "config.pbtxt").write_text(cfg.render())
        for n in names:
            os.replace(tmp / n, repo / n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return configs
