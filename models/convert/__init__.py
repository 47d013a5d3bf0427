"""Importers of pretrained checkpoints into the project format (``d2v convert ...``).

``hf``: Hugging Face ``Data2VecText/Audio/Vision`` repos (base and task models, as shipped); ``fairseq``:
fairseq data2vec 1.0 audio / text and data2vec 2.0 checkpoints, read by a restricted unpickler. Import the
submodules directly (``d2v.models.convert.hf``, ``d2v.models.convert.fairseq``); this package pulls in nothing.
"""
