"""``d2v serve`` flags and ``D2V_*`` environment parsing (no server is started)."""

from __future__ import annotations

import argparse

import pytest
import uvicorn

from d2v.server import cli
from d2v.server.settings import ServerSettings


def parse(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_defaults_are_loopback_and_safe(monkeypatch, tmp_path):
    monkeypatch.setenv("D2V_HOME", str(tmp_path))
    s = ServerSettings()
    assert (s.host, s.port, s.engine, s.workers) == ("127.0.0.1", 8080, "auto", 1)
    assert s.store == tmp_path / "models" and not s.api_keys and not s.allow_url_fetch


def test_environment_lists(monkeypatch):
    monkeypatch.setenv("D2V_API_KEYS", "a, b")
    monkeypatch.setenv("D2V_MODELS", '["m1", "m2"]')
    monkeypatch.setenv("D2V_ENGINE", "openvino")
    s = ServerSettings()
    assert s.api_key_values() == [b"a", b"b"] and s.models == ["m1", "m2"] and s.engine == "openvino"
    with pytest.raises(ValueError, match="allow-list|allowlist"):
        ServerSettings(allow_url_fetch=True)


def test_serve_flags_override_env(monkeypatch, store):
    monkeypatch.setenv("D2V_PORT", "9000")
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    args = parse(["--store", str(store), "--model", "tiny-text", "--api-key", "k", "--no-truncate", "--host", "::1"])
    assert args.func(args) == 0
    settings = seen["app"].state.settings
    assert (seen["host"], seen["port"]) == ("::1", 9000)
    assert settings.models == ["tiny-text"] and settings.api_key_values() == [b"k"] and settings.truncate is False
    assert [m.name for m in seen["app"].state.registry] == ["tiny-text"]


def test_workers_pass_settings_through_the_environment(monkeypatch, store):
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    # Recorded by monkeypatch so the variables the command sets are removed again after the test.
    monkeypatch.setenv("D2V_SERVER_SETTINGS_JSON", "{}")
    monkeypatch.setenv("D2V_API_KEYS", "")
    args = parse(["--store", str(store), "--workers", "2", "--api-key", "secret"])
    args.func(args)
    assert seen["app"] == "d2v.server.app:create_app_from_env" and seen["factory"] and seen["workers"] == 2
    from d2v.server.app import create_app_from_env

    app = create_app_from_env()
    assert app.state.api_keys == [b"secret"] and len(app.state.registry) == 3
