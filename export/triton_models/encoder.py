"""Triton python-backend model: runs the exported ONNX graph with the onnxruntime pip package.

For Triton builds without the onnxruntime backend (e.g. the ``tritonserver`` shipped in nvidia-pytriton,
which only has the python backend). Generated into ``<name>_encoder/1/model.py`` beside the ONNX file(s).
Parameters (config.pbtxt): ``onnx_file`` (default ``model.onnx``), ``intra_op_threads`` (0 = ORT default),
``providers`` (comma-separated, default: CUDA when available, then CPU).

Triton's dynamic batcher hands ``execute`` several requests; requests whose inputs have equal shapes
(after the batch axis) are concatenated into one ORT run and split again, so the outputs are exactly
what each request would get alone.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        wanted = [p for p in params.get("providers", "").split(",") if p] or [
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        path = os.path.join(HERE, params.get("onnx_file", "model.onnx"))
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        self.graph_inputs = {i.name for i in self.session.get_inputs()}
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]

    def _read(self, request):
        feeds = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                continue  # an optional input the client left out
            value = tensor.as_numpy()
            if name == "d2v_top_k":  # per-request scalar, [B, 1] in Triton -> [1] in the graph
                value = value.reshape(-1)[:1].astype(np.int64)
            feeds[name] = value
        return feeds

    def _run(self, feeds_list):
        key_names = [n for n in feeds_list[0] if n != "d2v_top_k"]
        merged = {n: np.concatenate([f[n] for f in feeds_list], axis=0) for n in key_names}
        if "d2v_top_k" in feeds_list[0]:
            merged["d2v_top_k"] = feeds_list[0]["d2v_top_k"]
        values = self.session.run(self.output_names, merged)
        sizes = np.cumsum([f[key_names[0]].shape[0] for f in feeds_list])[:-1]
        per_output = [np.split(v, sizes, axis=0) for v in values]
        return [dict(zip(self.output_names, parts, strict=True)) for parts in zip(*per_output, strict=True)]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            try:
                feeds = self._read(request)
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"bad input: {exc}", pb_utils.TritonError.INVALID_ARG)
                )
                continue
            key = tuple((n, v.shape[1:], v.dtype.str) for n, v in sorted(feeds.items()) if n != "d2v_top_k")
            key += (tuple(feeds.get("d2v_top_k", np.zeros(0, np.int64)).tolist()),)
            groups.setdefault(key, []).append((i, feeds))
        for members in groups.values():
            try:
                outputs = self._run([feeds for _, feeds in members])
            except Exception as exc:  # ORT rejects shapes/values it cannot take: the client's input
                error = pb_utils.TritonError(f"encoder rejected the input: {exc}", pb_utils.TritonError.INVALID_ARG)
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                continue
            for (i, _), out in zip(members, outputs, strict=True):
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in out.items()]
                )
        return responses
