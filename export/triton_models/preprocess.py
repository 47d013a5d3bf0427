"""Triton python-backend model: raw bytes / UTF-8 strings -> the encoder's input tensors.

Generated into ``<name>_preprocess/1/model.py`` by ``d2v export --format triton``. It runs the *same*
torch-free preprocessing code as the server and the export parity checks: the generator copies
``d2v/errors.py`` and ``d2v/models/preprocessing/`` next to this file (``1/d2v/...``) and this module puts
its own directory first on ``sys.path``, so it works in any Triton image whose Python has numpy,
tokenizers, Pillow, soundfile and soxr (no ``d2v`` install needed). ``1/preprocessing.json`` holds the
model's preprocessing config; the tokenizer file (text) sits beside it.

Input ``raw_input`` (TYPE_STRING, [B, 1]) per request. A request whose item cannot be decoded gets an
INVALID_ARG error response (HTTP 400), never a crash; the other requests of the same batch still run.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The shipped copy must win over any other ``d2v`` on the path (e.g. a source tree in the server's cwd).
sys.path[:] = [HERE] + [p for p in sys.path if p not in (HERE, "", ".")]
for _name in [m for m in sys.modules if m == "d2v" or m.startswith("d2v.")]:
    del sys.modules[_name]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from d2v.core.errors import D2VError  # noqa: E402
from d2v.models.preprocessing import build_preprocessor  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        with open(os.path.join(HERE, params.get("preprocessing_file", "preprocessing.json")), encoding="utf-8") as fh:
            self.cfg = json.load(fh)
        self.modality = self.cfg["modality"]
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]
        self.preprocessor = build_preprocessor(self.cfg, HERE)

    def _decode(self, raw):
        if self.modality == "text":
            if isinstance(raw, bytes | bytearray):
                try:
                    return raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"text input is not valid UTF-8: {exc}") from None
            return str(raw)
        if isinstance(raw, str):
            raw = raw.encode("latin-1")
        return bytes(raw)

    def _one(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
        items = []
        for i, value in enumerate(raw):
            try:
                items.append(self.preprocessor.load_item(self._decode(value)))
            except (D2VError, ValueError) as exc:
                message = getattr(exc, "message", str(exc))
                raise ValueError(f"item {i}: {message}") from None
        arrays = self.preprocessor.collate(items)
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(n, np.ascontiguousarray(arrays[n])) for n in self.output_names]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except ValueError as exc:
                error = pb_utils.TritonError(f"{self.modality} preprocessing: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as exc:  # a bug: report it on this request, keep the model alive
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocessing failed: {exc!r}"))
                )
        return responses
