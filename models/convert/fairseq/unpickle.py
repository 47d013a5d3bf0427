"""Reading fairseq ``.pt`` checkpoints without running code from them.

A fairseq checkpoint is a ``torch.save`` pickle whose ``cfg`` holds omegaconf objects (and older ones an
``argparse.Namespace``), so ``torch.load(weights_only=True)`` refuses it, and the stock unpickler would run
whatever callable the file names. ``load_checkpoint`` goes through ``torch.load`` (both the zip format and
the legacy one) with a restricted pickle module: only torch's tensor-rebuild functions (behind wrappers that
check their arguments), plain containers and a few inert value types resolve to real objects; every other
global becomes an ``Opaque`` placeholder class. Calling a placeholder, or building one through ``__reduce__``,
``NEWOBJ`` or ``BUILD``, only records its arguments and state, so a file naming ``os.system`` gets an inert
``Opaque`` object instead of a shell. ``to_plain`` turns the omegaconf placeholders (``DictConfig``,
``ListConfig``, value nodes), enums and namespaces back into plain dicts, lists and values.
"""

from __future__ import annotations

import _compat_pickle
import collections
import hashlib
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from d2v.core.errors import ConfigError, NotFound


class Opaque:
    """Stands in for an object of a class the restricted unpickler does not allow; keeps its data only."""

    module = ""
    qualname = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items=[], entries={})
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.entries[key] = value

    def __repr__(self) -> str:
        return f"<opaque {self.module}.{self.qualname}>"

    @classmethod
    def name(cls) -> str:
        return f"{cls.module}.{cls.qualname}"


# ------------------------------------------------------------------------------------- allowed globals
def _check_storage(storage: Any) -> None:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}")


def _ints(values: Any) -> tuple[int, ...]:
    if not isinstance(values, tuple | torch.Size) or not all(isinstance(v, int) for v in values):
        raise pickle.UnpicklingError("tensor size/stride must be a tuple of ints")
    return tuple(values)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """torch's ``_rebuild_tensor_v2`` with checked arguments; backward hooks and metadata are dropped."""
    _check_storage(storage)
    if not isinstance(offset, int):
        raise pickle.UnpicklingError("tensor offset must be an int")
    return torch._utils._rebuild_tensor(storage, offset, _ints(size), _ints(stride))


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    _check_storage(storage)
    if not isinstance(offset, int) or not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("bad tensor offset or dtype")
    return torch._utils._rebuild_tensor_v3(storage, offset, _ints(size), _ints(stride), False, OrderedDict(), dtype)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """Tensor subclasses: rebuilt as the plain tensor (``func`` is already a checked rebuild function)."""
    if func not in _TENSOR_REBUILDERS.values() or not isinstance(args, tuple):
        raise pickle.UnpicklingError("unexpected tensor rebuild function")
    return func(*args)


def _reconstructor(cls, base, state):
    """copyreg's protocol-0/1 object rebuild, for placeholders only."""
    if isinstance(cls, type) and issubclass(cls, Opaque):
        return cls(state)
    raise pickle.UnpicklingError(f"refusing to rebuild {cls!r}")


def _encode(text, encoding="latin1"):
    """``_codecs.encode``, which protocol-2 pickles use to store bytes: strings only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode call")
    return text.encode("latin1")


_TENSOR_REBUILDERS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_ALLOWED: dict[tuple[str, str], Any] = {
    **_TENSOR_REBUILDERS,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _encode,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, int, float, complex, bool, str)},
    **{("builtins", t.__name__): t for t in (bytes, bytearray, slice, range, object)},
}


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` that resolves only ``_ALLOWED`` names and torch dtypes; everything else is ``Opaque``.
    (torch's own wrapper resolves ``*Storage`` names before calling this.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._placeholders: dict[tuple[str, str], type[Opaque]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names in protocol-2 pickles
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):  # no lazy torch imports
            return vars(torch)[name]
        key = (module, name)
        if key not in self._placeholders:
            self._placeholders[key] = type(name, (Opaque,), {"module": module, "qualname": name})
        return self._placeholders[key]


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    __name__ = "d2v_restricted_pickle"
    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def load_checkpoint(path: str | os.PathLike) -> tuple[Any, str]:
    """Unpickle the fairseq checkpoint ``path`` safely; returns ``(state, sha256 of the file)``."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"fairseq checkpoint not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    try:
        state = torch.load(path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False)
    except RuntimeError as exc:
        if "TORCH_FORCE_WEIGHTS_ONLY_LOAD" in os.environ:
            raise ConfigError(f"cannot read {path}: unset TORCH_FORCE_WEIGHTS_ONLY_LOAD ({exc})") from None
        raise ConfigError(f"{path} is not a readable torch checkpoint: {exc}") from None
    except Exception as exc:  # corrupt or hostile pickles fail in many ways; all mean "not a checkpoint"
        raise ConfigError(f"{path} is not a readable fairseq checkpoint ({type(exc).__name__}: {exc})") from None
    return state, digest.hexdigest()


# ------------------------------------------------------------------------------------------ plain data
_OMEGACONF_CONTAINERS = {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"}
_INTERPOLATION = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def to_plain(obj: Any, _depth: int = 0) -> Any:
    """omegaconf configs -> dicts / lists, value nodes -> values, enums -> their value, namespaces -> dicts;
    tensors and plain values stay; other placeholders -> ``{"__opaque__": "module.Name"}``."""
    if _depth > 100:
        raise ConfigError("checkpoint config nests too deeply")
    if isinstance(obj, dict):
        return {k: to_plain(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v, _depth + 1) for v in obj]
    if not isinstance(obj, Opaque):
        return obj
    state = obj.state if isinstance(obj.state, dict) else {}
    name = type(obj).name()
    if name in _OMEGACONF_CONTAINERS:
        return to_plain(state.get("_content"), _depth + 1)
    if name.startswith("omegaconf.nodes."):
        return to_plain(state.get("_val"), _depth + 1)
    if name == "argparse.Namespace":
        return to_plain(state, _depth + 1)
    if obj.args and obj.state is None and not obj.kwargs:  # an Enum member: Enum(value)
        return to_plain(obj.args[0], _depth + 1)
    return {"__opaque__": name}


def resolve_interpolations(cfg: Any, root: Any | None = None, _depth: int = 0) -> Any:
    """Replace ``"${a.b}"`` strings (omegaconf interpolations saved unresolved) by the value at ``a.b`` of
    ``root``; anything that does not resolve is kept as the string."""
    root = cfg if root is None else root
    if _depth > 20:
        return cfg
    if isinstance(cfg, dict):
        return {k: resolve_interpolations(v, root, _depth) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [resolve_interpolations(v, root, _depth) for v in cfg]
    match = _INTERPOLATION.match(cfg) if isinstance(cfg, str) else None
    if not match:
        return cfg
    node = root
    for part in match.group(1).split("."):
        if not isinstance(node, dict) or part not in node:
            return cfg
        node = node[part]
    return resolve_interpolations(node, root, _depth + 1)


__all__ = ["Opaque", "RestrictedUnpickler", "load_checkpoint", "resolve_interpolations", "to_plain"]
