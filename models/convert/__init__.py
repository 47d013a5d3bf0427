"""Importers of pretrained checkpoints into the project format (``d2v convert ...``).

``hf``: Hugging Face ``Data2VecText/Audio/Vision`` repos (base and task models, as shipped). Import the
submodules directly (``d2v.models.convert.hf``); this package pulls in nothing.
"""
