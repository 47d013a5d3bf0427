"""Triton ``config.pbtxt`` as dataclasses, rendered to protobuf text format.

Torch-free and dependency-free: the renderer writes the text format itself so ``d2v export`` does not
need ``tritonclient``; the tests parse every generated file with Triton's own ``model_config.proto``
(``tritonclient.grpc.model_config_pb2``) to prove the field names and nesting are right.
Field names follow ``protobuf/model_config.proto`` of triton-inference-server/common.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

# numpy dtype name -> Triton data type (model_config.proto DataType)
TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bytes": "TYPE_STRING",
}


def triton_dtype(numpy_name: str) -> str:
    try:
        return TRITON_DTYPES[numpy_name]
    except KeyError:
        raise ValueError(f"no Triton data type for {numpy_name!r}") from None


def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid protobuf text-format string


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in dims) + " ]"


@dataclass
class Tensor:
    """An ``input`` / ``output`` entry. ``dims`` exclude the batch axis when ``max_batch_size > 0``."""

    name: str
    data_type: str  # "TYPE_FP32", ...
    dims: list[int]
    optional: bool = False  # inputs only

    def render(self, is_input: bool) -> str:
        parts = [f"name: {_q(self.name)}", f"data_type: {self.data_type}", f"dims: {_dims(self.dims)}"]
        if is_input and self.optional:
            parts.append("optional: true")
        return "  { " + " ".join(parts) + " }"


@dataclass
class QueuePolicy:
    """``default_queue_policy``: a bounded queue whose requests time out (REJECT -> the client sees 503/429)."""

    max_queue_size: int = 1024
    default_timeout_microseconds: int = 5_000_000
    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    allow_timeout_override: bool = True

    def render(self) -> str:
        return (
            "  default_queue_policy {\n"
            f"    timeout_action: {self.timeout_action}\n"
            f"    default_timeout_microseconds: {self.default_timeout_microseconds}\n"
            f"    allow_timeout_override: {str(self.allow_timeout_override).lower()}\n"
            f"    max_queue_size: {self.max_queue_size}\n"
            "  }\n"
        )


@dataclass
class DynamicBatching:
    preferred_batch_size: list[int] = field(default_factory=list)
    max_queue_delay_microseconds: int = 2000
    queue_policy: QueuePolicy | None = field(default_factory=QueuePolicy)
    preserve_ordering: bool = False

    def render(self) -> str:
        out = "dynamic_batching {\n"
        if self.preferred_batch_size:
            out += f"  preferred_batch_size: {_dims(self.preferred_batch_size)}\n"
        out += f"  max_queue_delay_microseconds: {self.max_queue_delay_microseconds}\n"
        if self.preserve_ordering:
            out += "  preserve_ordering: true\n"
        if self.queue_policy is not None:
            out += self.queue_policy.render()
        return out + "}\n"


@dataclass
class InstanceGroup:
    kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    count: int = 1
    gpus: list[int] = field(default_factory=list)

    def render(self) -> str:
        gpus = f" gpus: {_dims(self.gpus)}" if self.gpus else ""
        return f"  {{ kind: {self.kind} count: {self.count}{gpus} }}"


@dataclass
class WarmupInput:
    """One input of a warm-up sample: exactly one of zero/random data or a file under ``<model>/warmup/``."""

    name: str
    data_type: str
    dims: list[int]
    source: Literal["zero_data", "random_data", "input_data_file"] = "zero_data"
    input_data_file: str = ""

    def render(self) -> str:
        if self.source == "input_data_file":
            data = f"input_data_file: {_q(self.input_data_file)}"
        else:
            data = f"{self.source}: true"
        return (
            f"    inputs {{ key: {_q(self.name)} value: {{ data_type: {self.data_type} "
            f"dims: {_dims(self.dims)} {data} }} }}"
        )


@dataclass
class Warmup:
    name: str
    batch_size: int
    inputs: list[WarmupInput]
    count: int = 1

    def render(self) -> str:
        body = "\n".join(i.render() for i in self.inputs)
        return (
            f"  {{\n    name: {_q(self.name)}\n    batch_size: {self.batch_size}\n    count: {self.count}\n{body}\n  }}"
        )


@dataclass
class EnsembleStep:
    model_name: str
    input_map: dict[str, str]  # step model's input name -> ensemble tensor name
    output_map: dict[str, str]  # step model's output name -> ensemble tensor name
    model_version: int = -1

    def render(self) -> str:
        lines = [f"    {{\n      model_name: {_q(self.model_name)}", f"      model_version: {self.model_version}"]
        lines += [f"      input_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in self.input_map.items()]
        lines += [f"      output_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in self.output_map.items()]
        return "\n".join(lines) + "\n    }"


@dataclass
class ModelConfig:
    """One ``config.pbtxt``. Set ``backend`` (python, onnxruntime) or ``platform`` (ensemble, tensorrt_plan)."""

    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch_size: int = 0
    backend: str = ""
    platform: str = ""
    default_model_filename: str = ""
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = field(default_factory=list)
    warmup: list[Warmup] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    ensemble_steps: list[EnsembleStep] = field(default_factory=list)

    def __post_init__(self) -> None:
        if bool(self.backend) == bool(self.platform) and self.platform != "ensemble":
            raise ValueError(f"{self.name}: set exactly one of backend / platform")
        if self.platform == "ensemble" and not self.ensemble_steps:
            raise ValueError(f"{self.name}: an ensemble needs steps")

    def render(self) -> str:
        out = [f"name: {_q(self.name)}"]
        if self.backend:
            out.append(f"backend: {_q(self.backend)}")
        if self.platform:
            out.append(f"platform: {_q(self.platform)}")
        if self.default_model_filename:
            out.append(f"default_model_filename: {_q(self.default_model_filename)}")
        out.append(f"max_batch_size: {self.max_batch_size}")
        out.append("input [\n" + ",\n".join(t.render(True) for t in self.inputs) + "\n]")
        out.append("output [\n" + ",\n".join(t.render(False) for t in self.outputs) + "\n]")
        if self.instance_group:
            out.append("instance_group [\n" + ",\n".join(g.render() for g in self.instance_group) + "\n]")
        if self.dynamic_batching is not None:
            out.append(self.dynamic_batching.render().rstrip("\n"))
        for key, value in self.parameters.items():
            out.append(f"parameters {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}")
        if self.warmup:
            out.append("model_warmup [\n" + ",\n".join(w.render() for w in self.warmup) + "\n]")
        if self.ensemble_steps:
            steps = ",\n".join(s.render() for s in self.ensemble_steps)
            out.append(f"ensemble_scheduling {{\n  step [\n{steps}\n  ]\n}}")
        return "\n".join(out) + "\n"
