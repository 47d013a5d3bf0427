"""Runs INSIDE ``.venv-fairseq``: what keeps ``fairseq/examples/data2vec`` from importing on this stack,
handled before the import, in this process only (``harness.py`` calls ``setup()``):

* torchvision is absent: timm and the example data modules import it at module level; a stub module answers
  (nothing here runs torchvision code);
* the example config dataclasses use instances as defaults, which Python >= 3.11 refuses: turned into
  ``default_factory``;
* ``np.float`` / ``np.int`` are gone from NumPy;
* ``examples`` is registered as a package without putting fairseq's own directory on ``sys.path`` (its
  ``logging`` module would shadow the stdlib's);
* fairseq's loader calls ``torch.load`` without ``weights_only``, which torch >= 2.6 refuses for the
  omegaconf objects in ``cfg``: allowed in this process (the oracle reads only files it wrote).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np


# ------------------------------------------------------------------------------------------ import patches
class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (_Stub,), {})


class _Stub(metaclass=_StubMeta):
    """Any torchvision name: a class that can be subclassed, called and read from, and does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (_Stub,), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubMeta(name, (_Stub,), {})


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0"
        return module

    def exec_module(self, module):
        pass


def _instance_defaults_as_factories() -> None:
    original = dataclasses._get_field

    def get_field(cls, name, annotation, *args):
        default = cls.__dict__.get(name, dataclasses.MISSING)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            factory = functools.partial(copy.deepcopy, default)
            setattr(cls, name, dataclasses.field(default_factory=factory))
        return original(cls, name, annotation, *args)

    dataclasses._get_field = get_field


@functools.cache
def setup() -> types.SimpleNamespace:
    """Patch, import fairseq and ``examples.data2vec``; the classes the oracle needs."""
    if importlib.util.find_spec("torchvision") is None:
        sys.meta_path.insert(0, _TorchvisionStub())
    np.float, np.int = float, int  # removed from NumPy; the example code still uses them
    # fairseq's own loader calls torch.load without weights_only; torch >= 2.6 then refuses the omegaconf
    # objects in `cfg`. The oracle only reads files it wrote itself.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    _instance_defaults_as_factories()
    import warnings

    warnings.filterwarnings("ignore")
    import fairseq

    root = Path(fairseq.__file__).parent / "examples"
    spec = importlib.util.spec_from_file_location(
        "examples", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["examples"] = module
    spec.loader.exec_module(module)
    from examples.data2vec.data.modality import Modality
    from examples.data2vec.models import data2vec2, data2vec_audio, data2vec_text

    return types.SimpleNamespace(
        Modality=Modality,
        Data2VecMultiConfig=data2vec2.Data2VecMultiConfig,
        Data2VecMultiModel=data2vec2.Data2VecMultiModel,
        Data2VecAudioConfig=data2vec_audio.Data2VecAudioConfig,
        Data2VecAudioModel=data2vec_audio.Data2VecAudioModel,
        Data2VecTextConfig=data2vec_text.Data2VecTextConfig,
        Data2VecTextModel=data2vec_text.Data2VecTextModel,
    )
