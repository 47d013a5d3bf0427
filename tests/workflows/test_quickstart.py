"""``d2v quickstart`` on a reduced budget builds a servable store; pretrained != random init when served;
``d2v serve`` finds the default store, builds it when empty, and converts Hugging Face models on the fly."""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import testkit

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
STEPS = 3


@pytest.fixture(scope="module")
def quick_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """All three default models, trained for a few steps (the real pipeline, reduced budget)."""
    from d2v.workflows.options import QuickstartOptions
    from d2v.workflows.quickstart import build_models

    store = tmp_path_factory.mktemp("quickstart") / "models"
    summary = build_models(QuickstartOptions(store=store, seed=0, max_steps=STEPS, variants=(), progress=False))
    return store, summary


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _sample(modality: str, n: int = 3) -> list[Path]:
    folder = {"image": "images", "audio": "audio"}[modality]
    rows = (DATA / folder / "manifest.csv").read_text().splitlines()[1 : n + 1]
    return [DATA / folder / row.split(",")[0] for row in rows]


async def _embed(client, route: str, inputs: list, model: str | None = None) -> np.ndarray:
    body = {"input": inputs, **({"model": model} if model else {})}
    r = await client.post(f"/v1/embed/{route}", json=body)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    return np.asarray([d["embedding"] for d in data], dtype=np.float32)


@pytest.mark.slow
def test_quickstart_builds_every_default_model(quick_store):
    store, summary = quick_store
    assert sorted(p.name for p in store.iterdir()) == ["d2v-audio-tiny", "d2v-image-tiny", "d2v-text-tiny"]
    for modality in ("text", "image", "audio"):
        model_dir = store / f"d2v-{modality}-tiny"
        manifest = json.loads((model_dir / "model.json").read_text())
        assert manifest["name"] == model_dir.name and manifest["modality"] == modality
        assert (model_dir / "model.onnx").is_file() and (model_dir / "checkpoint" / "model.safetensors").is_file()
        info = json.loads((model_dir / "quickstart.json").read_text())
        assert info["steps"] == STEPS and info["seed"] == 0 and info["recipe"] == f"quickstart-{modality}"
        assert summary["models"][modality]["name"] == model_dir.name
    assert (store / "d2v-text-tiny" / "tokenizer.json").is_file()
    assert not [p for p in store.iterdir() if p.name.startswith(".")], "no staging leftovers"


@pytest.mark.slow
def test_quickstart_keeps_existing_models(quick_store, capsys):
    from d2v.workflows.options import QuickstartOptions
    from d2v.workflows.quickstart import build_models

    store, _ = quick_store
    before = (store / "d2v-image-tiny" / "model.onnx").stat().st_mtime_ns
    summary = build_models(QuickstartOptions(store=store, max_steps=1, modalities=("image",), progress=False))
    assert summary["skipped"] == ["image"] and not summary["models"]
    assert (store / "d2v-image-tiny" / "model.onnx").stat().st_mtime_ns == before
    assert "already in" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.anyio
async def test_quickstart_store_serves_all_modalities(quick_store):
    from d2v.server.app import create_app
    from d2v.server.settings import ServerSettings

    asgi_client = testkit.asgi_client
    store, _ = quick_store
    settings = ServerSettings(store=store, max_wait_ms=2.0, preprocess_workers=2)
    async with asgi_client(create_app(settings)) as client:
        models = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
        assert set(models) == {"d2v-text-tiny", "d2v-image-tiny", "d2v-audio-tiny"}
        text = await _embed(client, "text", ["Return the sum of two numbers.", "Open a socket connection."])
        image = await _embed(client, "image", [_b64(p) for p in _sample("image")])
        audio = await _embed(client, "audio", [_b64(p) for p in _sample("audio")])
        for vectors, n in ((text, 2), (image, 3), (audio, 3)):
            assert vectors.shape[0] == n and np.isfinite(vectors).all()
            assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        r = await client.post("/v1/embeddings", json={"model": "d2v-text-tiny", "input": "Compress data with zlib."})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == text.shape[1]


@pytest.mark.slow
@pytest.mark.anyio
async def test_served_pretrained_embeddings_differ_from_random_init(tmp_path):
    """A pretrained image model and its random initialisation (same architecture and seed), both exported
    and served: their embeddings of the same digits differ."""
    from d2v.export.exporter import ExportOptions, export_onnx
    from d2v.models.checkpoint import save_checkpoint
    from d2v.server.app import create_app
    from d2v.server.settings import ServerSettings
    from d2v.workflows.options import QuickstartOptions
    from d2v.workflows.quality import load_model
    from d2v.workflows.quickstart import build_models

    asgi_client = testkit.asgi_client
    store = tmp_path / "models"
    opts = QuickstartOptions(store=store, seed=0, max_steps=40, modalities=("image",), variants=(), progress=False)
    build_models(opts)
    ckpt_dir = store / "d2v-image-tiny" / "checkpoint"
    random = load_model(ckpt_dir, random_init=True, seed=0)
    pretrained = load_model(ckpt_dir)
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(random.model.state_dict().values(), pretrained.model.state_dict().values(), strict=True)
    )
    assert diff > 0
    random_ckpt = save_checkpoint(tmp_path / "random-ckpt", random.model, random.preprocessing, random.embedding)
    export_onnx(random_ckpt, store / "d2v-image-random", ExportOptions(name="d2v-image-random", variants=[]))

    images = [_b64(p) for p in _sample("image", 8)]
    settings = ServerSettings(store=store, max_wait_ms=2.0, preprocess_workers=2)
    async with asgi_client(create_app(settings)) as client:
        a = await _embed(client, "image", images, model="d2v-image-tiny")
        b = await _embed(client, "image", images, model="d2v-image-random")
    cosine = (a * b).sum(axis=1)  # both L2-normalised
    assert a.shape == b.shape and np.all(cosine < 0.99), cosine


def test_quickstart_cli_and_overrides():
    from d2v.cli import build_parser
    from d2v.core.errors import ConfigError
    from d2v.workflows.options import parse_overrides, parse_recipes

    args = build_parser().parse_args(["quickstart", "--steps-scale", "0.1", "--modalities", "image", "--force"])
    assert (args.steps_scale, args.modalities, args.force, args.seed) == (0.1, ["image"], True, 0)
    assert args.store is None
    assert parse_overrides(["optim.lr=1e-3", "text:run.max_steps=5"], ["text", "image"]) == {
        "text": ["optim.lr=1e-3", "run.max_steps=5"],
        "image": ["optim.lr=1e-3"],
    }
    assert parse_recipes(["image=tiny-image-v2"]) == {"image": "tiny-image-v2"}
    with pytest.raises(ConfigError):
        parse_overrides(["video:optim.lr=1"])
    with pytest.raises(ConfigError):
        parse_recipes(["image"])


def test_quickstart_and_quality_report_share_their_build_options():
    from d2v.cli import build_parser
    from d2v.workflows.cli import quickstart_options

    shared = ["--seed", "3", "--max-steps", "7", "--modalities", "text", "image", "--override", "text:optim.lr=1e-3"]
    shared += ["--recipe", "image=tiny-image-v2", "--jobs", "2", "--no-progress"]
    parser = build_parser()
    quick = quickstart_options(parser.parse_args(["quickstart", *shared]))
    quality = quickstart_options(parser.parse_args(["quality-report", *shared]))
    assert quick == quality
    assert (quick.seed, quick.max_steps, quick.jobs, quick.progress) == (3, 7, 2, False)
    assert quick.modalities == ("text", "image")
    assert quick.overrides == {"text": ["optim.lr=1e-3"], "image": []} and quick.recipes == {"image": "tiny-image-v2"}
    assert quick.store is None and quick.export and not quick.force


def test_quickstart_recipes_load():
    from d2v.core.contract import MODALITIES
    from d2v.training.config import load_config
    from d2v.workflows.quickstart import recipe_for

    for modality in MODALITIES:
        cfg = load_config(recipe_for(modality), [f"data.path={DATA}"])
        assert cfg.modality == modality and cfg.run.max_steps >= 1


def test_default_store_follows_d2v_home(monkeypatch, tmp_path):
    from d2v.core.paths import default_store, store_has_models
    from d2v.server.settings import ServerSettings

    monkeypatch.setenv("D2V_HOME", str(tmp_path))
    assert default_store() == tmp_path / "models" == ServerSettings().store
    monkeypatch.delenv("D2V_HOME")
    assert default_store() == Path.home() / ".cache" / "d2v" / "models"
    assert not store_has_models(tmp_path / "nowhere")
    (tmp_path / "models" / "m").mkdir(parents=True)
    assert not store_has_models(tmp_path / "models")
    (tmp_path / "models" / "m" / "model.json").write_text("{}")
    assert store_has_models(tmp_path / "models")


def _serve_args(argv: list[str]) -> argparse.Namespace:
    from d2v.workflows import serve as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_quickstart_if_empty_runs_quickstart_once(monkeypatch, tmp_path):
    """An empty store: ``d2v quickstart --store STORE`` runs (in a child process) before serving; a filled
    store: it does not."""
    import uvicorn

    from d2v.workflows import serve as cli

    calls = []

    def fake_call(cmd):
        calls.append(cmd)
        store = Path(cmd[cmd.index("--store") + 1])
        (store / "m").mkdir(parents=True)
        return 0

    served = {}
    monkeypatch.setenv("D2V_HOME", str(tmp_path))
    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    monkeypatch.setattr(cli, "resolve_model", lambda entry, store: entry)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    import d2v.server.app as app_module

    monkeypatch.setattr(app_module, "create_app", lambda settings: settings)
    args = _serve_args(["--quickstart-if-empty"])
    assert args.func(args) == 0
    assert calls == [[sys.executable, "-m", "d2v", "quickstart", "--store", str(tmp_path / "models")]]
    assert served["app"].store == tmp_path / "models"

    calls.clear()
    (tmp_path / "models" / "m" / "model.json").write_text("{}")
    args = _serve_args(["--quickstart-if-empty"])
    assert args.func(args) == 0 and calls == []


def test_serve_converts_a_local_hf_directory_once(monkeypatch, tmp_path):
    from d2v.core.errors import NotFound
    from d2v.workflows import serve as cli

    monkeypatch.setenv("D2V_HOME", str(tmp_path / "home"))
    hf = tmp_path / "my-data2vec-text"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "data2vec-text"}))
    runs = []

    def fake_run(argv, what):
        runs.append(argv)
        if argv[0] == "export":
            out = Path(argv[2])
            out.mkdir(parents=True)
            (out / "model.json").write_text("{}")

    monkeypatch.setattr(cli, "run_d2v", fake_run)
    store = tmp_path / "store"
    resolved = cli.resolve_model(str(hf), store)
    assert Path(resolved).parent.parent == tmp_path / "home" / "cache" / "hf"
    assert [r[0] for r in runs] == ["convert", "export"]
    assert runs[0][2] == str(hf) and runs[1][runs[1].index("--name") + 1] == "my-data2vec-text"
    assert cli.resolve_model(str(hf), store) == resolved and len(runs) == 2  # reused

    not_hf = tmp_path / "plain"
    not_hf.mkdir()
    (not_hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(NotFound, match="model_type"):
        cli.resolve_model(str(not_hf), store)
    with pytest.raises(NotFound, match="neither"):
        cli.resolve_model("no such model", store)


def test_serve_hub_id_offline_fails_clearly(monkeypatch, tmp_path):
    """Without network, ``d2v serve --model facebook/data2vec-text-base`` exits non-zero with a clear error."""
    from d2v.core.errors import ConfigError, NotFound
    from d2v.workflows import serve as cli

    monkeypatch.setenv("D2V_HOME", str(tmp_path))

    def offline(argv, what):
        raise ConfigError(f"{what} failed (d2v {argv[0]} exited with status 4)")

    monkeypatch.setattr(cli, "run_d2v", offline)
    with pytest.raises(NotFound, match="facebook/data2vec-text-base.*offline"):
        cli.resolve_model("facebook/data2vec-text-base", tmp_path / "store")


def test_d2v_quickstart_help_is_torch_free():
    code = (
        "import sys; from d2v.cli import build_parser; p = build_parser(); "
        "p.parse_args(['quickstart', '--modalities', 'text']); p.parse_args(['quality-report', '--no-export']); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
