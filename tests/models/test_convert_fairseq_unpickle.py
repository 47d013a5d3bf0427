"""The restricted unpickler for fairseq checkpoints: tensors and containers load, omegaconf configs become
plain data, and no callable named by the file ever runs (a marker file proves nothing executed)."""

from __future__ import annotations

import argparse
import enum
import io
import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict

import pytest
import torch

from d2v.core.errors import ConfigError, NotFound
from d2v.models.convert.fairseq.common import read_checkpoint
from d2v.models.convert.fairseq.unpickle import Opaque, load_checkpoint, resolve_interpolations, to_plain


class _Shell:
    """Unpickling this runs ``command`` with ``runner`` under the stock unpickler."""

    def __init__(self, runner, *args) -> None:
        self.runner, self.args = runner, args

    def __reduce__(self):
        return self.runner, self.args


def _marker_command(marker) -> str:
    return f"touch {marker}"


MALICIOUS = {
    "os.system": lambda m: _Shell(os.system, _marker_command(m)),
    "subprocess.call": lambda m: _Shell(subprocess.call, ["touch", str(m)]),
    "builtins.exec": lambda m: _Shell(exec, f"open({str(m)!r}, 'w').close()"),
    "builtins.eval": lambda m: _Shell(eval, f"open({str(m)!r}, 'w')"),
    "builtins.open": lambda m: _Shell(open, str(m), "w"),
}


@pytest.mark.parametrize("how", sorted(MALICIOUS))
@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_reduce_is_inert(tmp_path, how, legacy):
    marker = tmp_path / "pwned"
    payload = MALICIOUS[how](marker)
    path = tmp_path / "evil.pt"
    state = {"cfg": {"model": {"_name": "data2vec_audio"}, "x": payload}, "model": {"w": torch.ones(2)}}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    loaded, sha = load_checkpoint(path)
    assert not marker.exists(), "code from the checkpoint ran"
    assert isinstance(loaded["cfg"]["x"], Opaque) and len(sha) == 64
    assert torch.equal(loaded["model"]["w"], torch.ones(2))
    # The stock unpickler does run it: the test would notice if the payload were harmless.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_payload_in_the_weights_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(
        {"cfg": {"model": {"_name": "data2vec_audio"}}, "model": {"w": _Shell(os.system, f"touch {marker}")}}, path
    )
    with pytest.raises(ConfigError, match="not tensors"):
        read_checkpoint(path)
    assert not marker.exists()


def test_rebuild_functions_check_their_arguments(tmp_path):
    """A tensor rebuild fed a placeholder instead of a storage fails cleanly (typed error, nothing runs)."""

    class FakeRebuild:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (_Shell(os.system, "true"), 0, (2,), (1,), False, OrderedDict())

    path = tmp_path / "bad.pt"
    torch.save({"model": FakeRebuild()}, path)
    with pytest.raises(ConfigError, match="not a readable"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(NotFound):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(ConfigError):
        load_checkpoint(tmp_path / "junk.pt")
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"model": 1}, f)  # a plain pickle, not torch's format
    with pytest.raises(ConfigError):
        load_checkpoint(tmp_path / "raw.pt")


# -------------------------------------------------------------------------- omegaconf without omegaconf
def _fake_module(name: str, **classes) -> types.ModuleType:
    module = types.ModuleType(name)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__ = name, cls_name
        setattr(module, cls_name, cls)
    return module


class _Container:
    """Pickles like omegaconf's DictConfig/ListConfig/AnyNode: NEWOBJ + BUILD with a state dict."""

    def __init__(self, **state) -> None:
        self.__dict__.update(state)

    def __getstate__(self):
        return dict(self.__dict__)


class Modality(enum.Enum):
    AUDIO = 1


def test_omegaconf_state_becomes_plain_data(tmp_path, monkeypatch):
    DictConfig = type("DictConfig", (_Container,), {})
    ListConfig = type("ListConfig", (_Container,), {})
    AnyNode = type("AnyNode", (_Container,), {})
    modules = {
        "omegaconf": _fake_module("omegaconf"),
        "omegaconf.dictconfig": _fake_module("omegaconf.dictconfig", DictConfig=DictConfig),
        "omegaconf.listconfig": _fake_module("omegaconf.listconfig", ListConfig=ListConfig),
        "omegaconf.nodes": _fake_module("omegaconf.nodes", AnyNode=AnyNode),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    root = DictConfig(_metadata=None, _parent=None, _content={})
    model = DictConfig(_metadata=None, _parent=root, _content={})
    model._content.update(
        depth=AnyNode(_val=12, _parent=model, _metadata=None),
        heads="${model.depth}",
        spec=ListConfig(_content=[AnyNode(_val=1, _parent=None, _metadata=None), 2], _parent=model, _metadata=None),
        kind=Modality.AUDIO,
        missing=AnyNode(_val="???", _parent=model, _metadata=None),
    )
    root._content["model"] = model
    args = argparse.Namespace(arch="data2vec_audio", encoder_layers=3)
    path = tmp_path / "cfg.pt"
    torch.save({"cfg": root, "args": args, "model": {}}, path)
    for name in modules:
        monkeypatch.delitem(sys.modules, name)  # the loader must not need omegaconf
    state, _ = load_checkpoint(path)
    cfg = resolve_interpolations(to_plain(state["cfg"]))
    assert cfg == {"model": {"depth": 12, "heads": 12, "spec": [1, 2], "kind": 1, "missing": "???"}}
    assert to_plain(state["args"]) == {"arch": "data2vec_audio", "encoder_layers": 3}


def test_interpolations_resolve_or_stay():
    cfg = {"a": {"b": 3, "c": "${a.b}", "d": "${nowhere.x}", "e": "x ${a.b}"}, "f": "${a.c}"}
    assert resolve_interpolations(cfg) == {"a": {"b": 3, "c": 3, "d": "${nowhere.x}", "e": "x ${a.b}"}, "f": 3}


def test_placeholders_record_but_never_call():
    from d2v.models.convert.fairseq.unpickle import RestrictedUnpickler

    data = pickle.dumps(_Shell(os.system, "false"), protocol=2)
    obj = RestrictedUnpickler(io.BytesIO(data)).load()
    assert isinstance(obj, Opaque) and type(obj).name() in ("posix.system", "nt.system")
    assert obj.args == ("false",)


@pytest.mark.parametrize("legacy", [False, True])
def test_tensors_dtypes_and_containers_load(tmp_path, legacy):
    """fp16 / bf16 tensors (released checkpoints are often fp16), views, dtypes, sizes, devices, containers."""
    base = torch.arange(12, dtype=torch.float16).reshape(3, 4)
    state = {
        "model": OrderedDict(w=base, view=base[1:, ::2], b=torch.ones(2, dtype=torch.bfloat16)),
        "meta": {"dtype": torch.float16, "size": torch.Size([2, 3]), "device": torch.device("cpu")},
        "misc": [1, 2.5, "x", (3, 4), {5}, frozenset({6}), b"bytes", None, True],
    }
    path = tmp_path / "ok.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    loaded, _ = load_checkpoint(path)
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor) and loaded["model"][name].dtype == tensor.dtype
    assert loaded["meta"] == state["meta"] and loaded["misc"] == state["misc"]
