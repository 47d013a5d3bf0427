"""data2vec embedding system: train, export and serve data2vec models for audio, images and text.

The distribution installs one import package, ``d2v``; the repository folders map onto it (README.md,
"Layout"): ``core/ -> d2v.core``, ``models/ -> d2v.models``, ``training/ -> d2v.training``,
``export/ -> d2v.export``, ``runtime/ -> d2v.runtime``, ``server/ -> d2v.server``,
``clients/extract/ -> d2v.extract``, ``workflows/ -> d2v.workflows``. This folder holds the ``d2v`` command
line (the top floor). Every module imports this package first, so it imports nothing.
"""

__version__ = "0.1.0"
