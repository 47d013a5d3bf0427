"""data2vec embedding system: train, export and serve data2vec models for audio, images and text.

The distribution installs one import package, ``d2v``; the repository folders map onto it:
``models/ -> d2v.models``, ``training/ -> d2v.training``, ``export/ -> d2v.export``,
``server/ -> d2v.server``. Nothing here imports torch.
"""

__version__ = "0.1.0"
