"""The ground floor: what every other part of the project may import, and nothing above it.

Errors (``errors``), file locations (``paths``), the exported-model contract (``contract``: the ONNX names,
input feeds, output choice, token trimming, synthetic inputs; ``manifest``: ``model.json``), the one
dict -> dataclass converter (``config``) and small file helpers (``files``). Standard library and numpy only:
no torch, no other first-party package.
"""
