"""``model.json``: the manifest of an exported model (docs/contracts.md, "Exported model").

The server needs nothing but this file and the files it names. The dataclass is torch-free and
dependency-free (stdlib + the rest of ``d2v.core``) because the serving path imports it; ``d2v export`` fills it.
Preprocessing stays a plain dict here (``d2v.models.preprocessing.preprocessing_from_dict`` rebuilds
the config) so this module does not depend on the models package.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d2v.core.config import from_dict, to_dict
from d2v.core.contract import CLS_OUTPUT, INPUT_NAMES, MODALITIES, NORMS, POOLINGS, TOP_K_INPUT, output_names
from d2v.core.errors import ConfigError, NotFound

FORMAT = "d2v-model"
VERSION = 1
MANIFEST_FILE = "model.json"


@dataclass
class TensorSpec:
    dtype: str  # numpy-style name: "int64", "float32"
    shape: list[int | str]  # symbolic axes as strings ("batch", "sequence"), fixed axes as ints


PRECISIONS = ("fp32", "fp16", "int8", "bf16")
VARIANT_ENGINES = ("onnxruntime", "openvino")


@dataclass
class Variant:
    """One servable form of the model.

    ``engine``: the embedded engine the variant is built for (``None``: any engine that reads ONNX).
    ``precision``: the arithmetic it runs in. ``bf16`` is the fp32 graph run by OpenVINO with
    ``INFERENCE_PRECISION_HINT=bf16`` (so ``engine="openvino"``); ``fp16`` / ``int8`` are ONNX Runtime files.
    Manifests written before these fields existed load with both inferred from the variant's name.
    """

    file: str  # relative to the model directory
    cosine_vs_fp32: float | None = None
    engine: str | None = None
    precision: str = "fp32"

    @staticmethod
    def upgrade(name: str, data: Any) -> Any:
        """An older manifest's variant (no ``precision``): the variant's name is its precision and engine."""
        if not isinstance(data, dict) or "precision" in data:
            return data
        values = {**data, "precision": name if name in PRECISIONS else "fp32"}
        if name == "bf16":
            values.setdefault("engine", "openvino")
        elif name in ("fp16", "int8", "optimized"):  # ORT files (optimized: ORT-only fused operators)
            values.setdefault("engine", "onnxruntime")
        return values


@dataclass
class TritonNames:
    """The Triton model names this export is served under (``d2v export --triton``).

    Defaults follow the repository generator's convention: ``<name>_encoder`` takes the ONNX tensors,
    ``<name>_preprocess`` is the python-backend model and the ensemble ``<name>`` takes raw bytes in
    ``raw_input`` (BYTES, [B, 1]: UTF-8 text or encoded image/audio files).
    """

    encoder: str = ""
    preprocess: str = ""
    ensemble: str = ""
    raw_input: str = "raw_input"


@dataclass
class ModelManifest:
    name: str
    modality: str
    embedding_dim: int
    num_layers: int
    top_k: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    variants: dict[str, Variant]
    preprocessing: dict[str, Any]
    norm: str = "layer"
    pooling: str = "mean"
    normalized: bool = False  # whether the graph already L2-normalises the pooled vectors
    supports_top_k: bool = False
    default_variant: str = "fp32"
    max_batch_size: int = 64
    parity: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    triton: TritonNames = field(default_factory=TritonNames)
    # Measured speed and cosine of every (engine, variant) on the exporting host, with its CPU fingerprint
    # (d2v.runtime.selection.Calibration); ``--engine auto`` reuses it on a host with the same fingerprint.
    calibration: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    def __post_init__(self) -> None:
        # Fill the Triton names from the model name, so a manifest without a "triton" block still works.
        self.triton.encoder = self.triton.encoder or f"{self.name}_encoder"
        self.triton.preprocess = self.triton.preprocess or f"{self.name}_preprocess"
        self.triton.ensemble = self.triton.ensemble or self.name

    # ----------------------------------------------------------------------------------- validation
    def validate(self) -> ModelManifest:
        """Raise ``ConfigError`` naming the first inconsistency; return self for chaining."""

        def bad(msg: str) -> ConfigError:
            return ConfigError(f"model.json for {self.name!r}: {msg}")

        if self.format != FORMAT:
            raise bad(f"format must be {FORMAT!r}, got {self.format!r}")
        if self.version != VERSION:
            raise bad(f"unsupported manifest version {self.version} (this build reads version {VERSION})")
        if not self.name or "/" in self.name:
            raise bad("name must be a non-empty string without '/'")
        if self.modality not in MODALITIES:
            raise bad(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.embedding_dim <= 0 or self.num_layers <= 0:
            raise bad("embedding_dim and num_layers must be positive")
        if not 1 <= self.top_k <= self.num_layers:
            raise bad(f"top_k must be in [1, num_layers={self.num_layers}], got {self.top_k}")
        if self.norm not in NORMS:
            raise bad(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.pooling not in POOLINGS or (self.pooling == "cls" and self.modality == "audio"):
            raise bad(f"pooling {self.pooling!r} is not available for {self.modality}")
        missing_in = set(INPUT_NAMES[self.modality]) - set(self.inputs)
        if missing_in:
            raise bad(f"inputs lack {sorted(missing_in)}")
        if self.supports_top_k != (TOP_K_INPUT in self.inputs):
            raise bad(
                f"supports_top_k={self.supports_top_k} but {TOP_K_INPUT!r} in inputs is {not self.supports_top_k}"
            )
        missing_out = set(output_names(self.modality)) - set(self.outputs)
        if missing_out:
            raise bad(f"outputs lack {sorted(missing_out)}")
        for vname, v in self.variants.items():
            if v.precision not in PRECISIONS:
                raise bad(f"variant {vname!r}: precision must be one of {PRECISIONS}, got {v.precision!r}")
            if v.engine is not None and v.engine not in VARIANT_ENGINES:
                raise bad(f"variant {vname!r}: engine must be one of {VARIANT_ENGINES} or null, got {v.engine!r}")
            if v.precision == "bf16" and v.engine != "openvino":
                raise bad(f"variant {vname!r}: bf16 is an OpenVINO precision hint, so its engine must be 'openvino'")
        if self.default_variant not in self.variants:
            raise bad(f"default_variant {self.default_variant!r} is not one of {sorted(self.variants)}")
        if self.preprocessing.get("modality") != self.modality:
            raise bad(f"preprocessing.modality must be {self.modality!r}")
        if self.max_batch_size <= 0:
            raise bad("max_batch_size must be positive")
        return self

    # --------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        """Build (the project's strict converter: unknown keys and wrong types are errors) and validate."""
        if isinstance(data, dict) and isinstance(data.get("variants"), dict):
            data = {**data, "variants": {k: Variant.upgrade(k, v) for k, v in data["variants"].items()}}
        return from_dict(cls, data, where="model.json").validate()

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> ModelManifest:
        path = Path(model_dir) / MANIFEST_FILE
        if not path.is_file():
            raise NotFound(f"no {MANIFEST_FILE} in {Path(model_dir)}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(data)

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Validate, then write ``model.json`` atomically (temp file + rename)."""
        self.validate()
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        path = model_dir / MANIFEST_FILE
        fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".model.json.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------------------------- helpers
    def variant_file(self, model_dir: str | os.PathLike, variant: str | None = None) -> Path:
        """The ONNX file of ``variant`` (default: ``default_variant``); ``NotFound`` if unknown or absent."""
        name = variant or self.default_variant
        if name not in self.variants:
            raise NotFound(f"model {self.name!r} has no variant {name!r}; available: {sorted(self.variants)}")
        path = Path(model_dir) / self.variants[name].file
        if not path.is_file():
            raise NotFound(f"model {self.name!r} variant {name!r}: file {path} is missing")
        return path

    def select_variant(self, engine: str, variant: str | None = None) -> tuple[str, Variant]:
        """The variant an engine serves (default: ``default_variant``), or a ``ConfigError`` saying why this
        engine cannot run it (a startup error: the server refuses to start rather than serve something else).
        """
        name = variant or self.default_variant
        if name not in self.variants:
            raise ConfigError(f"model {self.name!r} has no variant {name!r}; model.json offers {sorted(self.variants)}")
        v = self.variants[name]
        if v.engine is not None and v.engine != engine:
            hint = "--engine openvino" if v.engine == "openvino" else f"--engine {v.engine}"
            raise ConfigError(
                f"model {self.name!r} variant {name!r} ({v.precision}, {v.file}) is built for {v.engine}, "
                f"not {engine}: serve it with {hint} or pick another --variant ({self.variants_for(engine)})"
            )
        return name, v

    def variants_for(self, engine: str) -> list[str]:
        """Variant names ``engine`` can run."""
        return sorted(n for n, v in self.variants.items() if v.engine in (None, engine))

    @property
    def has_cls(self) -> bool:
        return CLS_OUTPUT in self.outputs
