"""The torch-free runtime shared by the server and batch extraction: engines that run an exported ONNX
graph (ONNX Runtime, OpenVINO, Triton, a fake for tests), output shaping (``postprocess``) and model-store
discovery (``store``). It imports the core and the preprocessing, never torch, ``server`` or ``extract``."""
