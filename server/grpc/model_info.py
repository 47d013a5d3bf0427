"""ServerMetadata, ModelMetadata and ModelConfig answers, shaped like Triton's for the generated ensemble.

A served model looks like the ensemble ``<name>`` of ``d2v export --format triton``: input
``manifest.triton.raw_input`` (BYTES, dims ``[1]``), the manifest's outputs with their datatypes and dims
(batch axis left out of the config, ``-1`` for symbolic axes), ``max_batch_size``. Two honest differences:
``platform`` is ``d2v`` (the gateway is not a Triton ensemble, so there are no ``ensemble_scheduling``
steps), and the config's ``parameters`` say what the gateway adds (modality, default pooling, dimension,
whether ``layers`` works, the token-id input), which clients such as ``d2v_client.GrpcClient`` read.
"""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import np_to_triton_dtype

from d2v import __version__
from d2v.core.manifest import TensorSpec

from ..served_model import ServedModel
from .tensors import TOKEN_IDS_INPUT

SERVER_NAME = "d2v"  # ServerMetadata.name; Triton answers "triton"
PLATFORM = "d2v"
VERSION = "1"  # one version per served model, as the generated repository has
EXTENSIONS = ("model_configuration", "parameters")


def server_metadata() -> service_pb2.ServerMetadataResponse:
    return service_pb2.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))


def _dims(spec: TensorSpec) -> list[int]:
    """Manifest shape (batch first) -> dims without the batch axis; symbolic axes -> -1."""
    return [d if isinstance(d, int) else -1 for d in spec.shape[1:]]


def _datatype(spec: TensorSpec) -> str:
    return np_to_triton_dtype(np.dtype(spec.dtype))  # "FP32", "INT64"


def max_batch_size(model: ServedModel) -> int:
    """What the ensemble declares, capped by what one gateway request may carry."""
    return min(model.manifest.max_batch_size, model.settings.max_items_per_request)


def model_metadata(model: ServedModel) -> service_pb2.ModelMetadataResponse:
    m = model.manifest
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    return service_pb2.ModelMetadataResponse(
        name=m.name,
        versions=[VERSION],
        platform=PLATFORM,
        inputs=[tensor(name=m.triton.raw_input, datatype="BYTES", shape=[-1, 1])],
        outputs=[tensor(name=n, datatype=_datatype(s), shape=[-1, *_dims(s)]) for n, s in m.outputs.items()],
    )


def model_config(model: ServedModel) -> service_pb2.ModelConfigResponse:
    m = model.manifest
    dtype = model_config_pb2.DataType.Value
    params = {
        "modality": m.modality,
        "pooling": m.pooling,
        "embedding_dim": str(m.embedding_dim),
        "supports_layers": str(bool(m.supports_top_k and not model.engine.raw_inputs)).lower(),
        "num_layers": str(m.num_layers),
        "max_request_bytes": str(model.settings.max_body_bytes),
    }
    if m.modality == "text" and not model.engine.raw_inputs:
        params["token_ids_input"] = TOKEN_IDS_INPUT
    config = model_config_pb2.ModelConfig(
        name=m.name,
        platform=PLATFORM,
        backend=model.engine.kind,
        max_batch_size=max_batch_size(model),
        input=[model_config_pb2.ModelInput(name=m.triton.raw_input, data_type=dtype("TYPE_STRING"), dims=[1])],
        output=[
            model_config_pb2.ModelOutput(name=n, data_type=dtype(f"TYPE_{_datatype(s)}"), dims=_dims(s))
            for n, s in m.outputs.items()
        ],
        parameters={k: model_config_pb2.ModelParameter(string_value=v) for k, v in params.items()},
    )
    config.version_policy.latest.num_versions = 1
    return service_pb2.ModelConfigResponse(config=config)
