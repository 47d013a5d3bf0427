"""Static checks of the container images and Kubernetes manifests (Dockerfile, deploy/).

No Docker engine or cluster is needed: the Dockerfiles are parsed, the manifests are loaded with PyYAML
and rendered per overlay with a small kustomize subset (resources + strategic-merge patches), and what they
reference is checked against the code: probe paths against the FastAPI app's routes, D2V_* names against
``ServerSettings``, command lines against ``d2v``'s argparse parser, ports against Services. Torch-free.
When ``kubectl`` is installed, the overlays are also rendered with ``kubectl kustomize`` and compared.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAYS = ("embedded", "triton")
DOCKERFILES = (ROOT / "Dockerfile", DEPLOY / "triton" / "Dockerfile")
TRITON_PROBE_PATHS = {"/v2/health/live", "/v2/health/ready"}


# ---------------------------------------------------------------------------------------------- helpers
def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Instruction:
    keyword: str  # upper case
    value: str  # the rest of the line, continuations joined
    stage: str  # the stage's alias (or its index)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order). Joins ``\\`` continuations and skips comments, as Docker does."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):  # comments inside a continued instruction are dropped
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, f"{path}: dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            m = re.match(r"^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", value, re.IGNORECASE)
            assert m, f"{path}: cannot parse FROM {value!r}"
            stages.append(Stage(name=m.group(2) or str(len(stages)), base=m.group(1)))
        elif not stages:
            assert keyword == "ARG", f"{path}: only ARG may precede the first FROM, not {keyword}"
            name, _, default = value.partition("=")
            global_args[name] = default.strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, value, stages[-1].name))
    return global_args, stages


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON (exec) form of CMD / ENTRYPOINT / HEALTHCHECK CMD; shell form is refused (signals!)."""
    value = instruction.value
    if instruction.keyword == "HEALTHCHECK":
        value = value[value.index(" CMD ") + len(" CMD ") :] if " CMD " in value else value
    value = value.strip()
    assert value.startswith("["), f"{instruction.keyword} must use the exec (JSON) form: {instruction.value!r}"
    return json.loads(value)


def arg_default(stage: Stage, global_args: dict[str, str], name: str) -> str:
    for inst in stage.all("ARG"):
        key, _, default = inst.value.partition("=")
        if key == name:
            return default.strip('"')
    return global_args[name]


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for inst in stage.all("ENV"):
        for token in shlex.split(inst.value):
            key, sep, value = token.partition("=")
            assert sep, f"use ENV KEY=VALUE, not the legacy form: {inst.value!r}"
            env[key] = value
    return env


def stage_chain(stages: list[Stage], target: str) -> list[Stage]:
    """Every stage ``target`` is built from (FROM ancestry and COPY --from), itself included."""
    by_name = {s.name: s for s in stages}
    todo, seen = [target], []
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.append(name)
        stage = by_name[name]
        todo.append(stage.base)
        for inst in stage.all("COPY"):
            m = re.search(r"--from=(\S+)", inst.value)
            if m:
                todo.append(m.group(1))
    return [by_name[n] for n in seen]


def copy_sources(instruction: Instruction) -> list[str]:
    tokens = [t for t in shlex.split(instruction.value) if not t.startswith("--")]
    if tokens and tokens[0].startswith("["):
        tokens = json.loads(instruction.value)
    return tokens[:-1]


def dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").strip("/")))
    return patterns


def _match(pattern: str, path: str) -> bool:
    """Docker's matching: a pattern matches the path or any parent directory of it; ``**`` is any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch.fnmatchcase(p, tail) for p in parts) or any(fnmatch.fnmatchcase(p, tail) for p in prefixes)
    return any(fnmatch.fnmatchcase(p, pattern) and p.count("/") == pattern.count("/") for p in prefixes)


def dockerignored(path: str) -> bool:
    ignored = False
    for negate, pattern in dockerignore_patterns():
        if _match(pattern, path):
            ignored = not negate
    return ignored


# ----------------------------------------------------------------------------------- manifests (render)
def load_yaml(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _merge(base, patch):
    """Strategic merge, the part these manifests use: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    named = lambda xs: isinstance(xs, list) and xs and all(isinstance(x, dict) and "name" in x for x in xs)  # noqa: E731
    if named(base) and named(patch):
        out = list(base)
        index = {x["name"]: i for i, x in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = _merge(out[index[item["name"]]], item)
            else:
                out.append(item)
        return out
    return patch


def render(directory: Path) -> list[dict]:
    """A kustomization's resources (recursively) with its strategic-merge patches applied."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources: list[dict] = []
    for entry in kust.get("resources", []):
        path = (directory / entry).resolve()
        resources += render(path) if path.is_dir() else load_yaml(path)
    for patch_entry in kust.get("patches", []):
        for patch in load_yaml(directory / patch_entry["path"]):
            key = (patch["kind"], patch["metadata"]["name"])
            targets = [i for i, r in enumerate(resources) if (r["kind"], r["metadata"]["name"]) == key]
            assert len(targets) == 1, f"patch {patch_entry['path']} matches {len(targets)} resources"
            resources[targets[0]] = _merge(resources[targets[0]], patch)
    return resources


def one(resources: list[dict], kind: str, name: str) -> dict:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(resources: list[dict]) -> Iterator[tuple[dict, dict]]:
    for r in resources:
        if r["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield r, r["spec"]["template"]["spec"]


def containers(resources: list[dict]) -> Iterator[tuple[dict, dict]]:
    for r, spec in pod_specs(resources):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield r, c


def is_gateway(container: dict) -> bool:
    return container["image"].split(":")[0].rsplit("/", 1)[-1] == "d2v"


def resolve_port(container: dict, port) -> int:
    ports = container.get("ports", [])
    if isinstance(port, str):
        matches = [p["containerPort"] for p in ports if p.get("name") == port]
        assert matches, f"container {container['name']}: no port named {port!r}"
        return matches[0]
    assert port in [p["containerPort"] for p in ports], f"container {container['name']}: port {port} not declared"
    return port


def probes(container: dict) -> dict[str, dict]:
    return {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    from d2v.cli import build_parser

    return build_parser()


def parse_d2v(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    assert argv[0] == "d2v", argv
    try:
        return parser.parse_args(argv[1:])
    except SystemExit as exc:  # argparse's way of saying "unknown flag / bad value"
        raise AssertionError(f"`{shlex.join(argv)}` is not a valid d2v command line") from exc


def setting_env_names() -> set[str]:
    from d2v.core.paths import HOME_ENV
    from d2v.server.settings import ServerSettings

    prefix = ServerSettings.model_config["env_prefix"]
    return {prefix + name.upper() for name in ServerSettings.model_fields} | {HOME_ENV}


def gateway_env(resources: list[dict]) -> dict[str, str]:
    """The D2V_* environment a gateway container gets: its ConfigMaps (envFrom), then its literal env."""
    (deployment, container) = next((d, c) for d, c in containers(resources) if is_gateway(c))
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(resources, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


# ------------------------------------------------------------------------------------------------ YAML
def test_every_yaml_file_parses_and_is_a_kubernetes_object():
    # deploy/compose/ holds Docker Compose and Prometheus files, checked by the compose tests below.
    files = [f for f in sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))]
    assert not [f for f in DEPLOY.rglob("*.y*ml") if K8S not in f.parents and f.parent.name != "compose"]
    assert files, "no manifests under deploy/"
    for path in files:
        docs = load_yaml(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert {"apiVersion", "kind"} <= doc.keys(), f"{path}: a document without apiVersion / kind"
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"


def test_overlays_cover_both_variants(rendered):
    embedded, triton = rendered["embedded"], rendered["triton"]
    for resources in (embedded, triton):
        for kind in ("ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            one(resources, kind, "d2v-gateway")
        one(resources, "PersistentVolumeClaim", "d2v-model-store")
        hpa = one(resources, "HorizontalPodAutoscaler", "d2v-gateway")
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d2v-gateway"}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert not [r for r in embedded if r["metadata"]["name"].startswith("d2v-triton")]
    one(triton, "Deployment", "d2v-triton")
    one(triton, "Service", "d2v-triton")
    assert gateway_env(embedded)["D2V_ENGINE"] == "onnxruntime"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_kustomize_renders_like_the_static_renderer(overlay, rendered):
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in rendered[overlay]
    )
    assert {d["metadata"].get("namespace") for d in built} == {"d2v"}
    mine = one(rendered[overlay], "ConfigMap", "d2v-gateway")["data"]
    assert one(built, "ConfigMap", "d2v-gateway")["data"] == mine
    gateway = one(built, "Deployment", "d2v-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["resources"] == next(c for _, c in containers(rendered[overlay]) if is_gateway(c))["resources"]


# -------------------------------------------------------------------------------------------- probes
def test_gateway_probe_paths_are_routes_of_the_app(rendered, tmp_path):
    import grpc
    from fastapi.testclient import TestClient
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from d2v.server.app import create_app
    from d2v.server.settings import ServerSettings

    # No engines (torch-free, no models): the routes and health services are what matters. Asking the app
    # itself, rather than walking its routing table, keeps this independent of how FastAPI nests routers.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        grpc_port = sock.getsockname()[1]
    app = create_app(ServerSettings(store=tmp_path, grpc_port=grpc_port), engines=[])
    with TestClient(app) as client, grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert client.get("/no-such-route").status_code == 404
        for resources in rendered.values():
            for _, c in containers(resources):
                for kind, probe in probes(c).items():
                    if "grpc" in probe:  # Kubernetes' native gRPC probe: a health service of the app
                        assert is_gateway(c), f"{c['name']} {kind}: only the gateway serves grpc.health.v1"
                        assert resolve_port(c, probe["grpc"]["port"]) == int(gateway_env(resources)["D2V_GRPC_PORT"])
                        service = probe["grpc"].get("service", "")
                        health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)  # NOT_FOUND raises
                        continue
                    path = probe["httpGet"]["path"]
                    resolve_port(c, probe["httpGet"]["port"])
                    if is_gateway(c):
                        assert probe["httpGet"].get("scheme", "HTTP") == "HTTP"
                        status = client.get(path).status_code
                        assert status != 404, f"{c['name']} {kind} {path} is not a route of the app"
                        assert status < 400, f"{c['name']} {kind} {path}: {status} with no model to warm"
                    else:
                        assert path in TRITON_PROBE_PATHS, f"{c['name']} {kind}: {path}"
                if is_gateway(c):
                    # Readiness = every model warm (service ""); liveness must not follow readiness: a Triton
                    # outage must not restart every gateway.
                    assert c["readinessProbe"]["grpc"]["service"] == ""
                    assert c["livenessProbe"]["grpc"]["service"] == "liveness"
                    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
        assert health.Check(health_pb2.HealthCheckRequest(service="liveness")).status == 1  # SERVING


def test_triton_probes_and_flags(rendered):
    resources = rendered["triton"]
    deployment = one(resources, "Deployment", "d2v-triton")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    args = container.get("command", []) + container["args"]
    assert args[0] == "tritonserver"
    flags = dict(a.split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)
    assert flags["--model-control-mode"] == "none"
    assert flags["--strict-readiness"] == "true"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert (flags["--http-port"], flags["--grpc-port"], flags["--metrics-port"]) == ("8000", "8001", "8002")
    # The repository comes from a PVC mounted where --model-repository points.
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == flags["--model-repository"])
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    one(resources, "PersistentVolumeClaim", claim)
    # One GPU: an extended resource, so requests (when given) must equal limits.
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"].get("nvidia.com/gpu", 1) == 1
    assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"]), "python backend needs /dev/shm"
    # Triton's own drain (--exit-timeout-secs) fits in the grace period after the preStop delay.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + int(flags["--exit-timeout-secs"])


# ----------------------------------------------------------------------------------- ports / services
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_target_ports_match_container_ports(overlay, rendered):
    resources = rendered[overlay]
    services = [r for r in resources if r["kind"] == "Service"]
    assert services
    for svc in services:
        selector = svc["spec"]["selector"]
        backends = [
            c
            for r, c in containers(resources)
            if r["kind"] != "Job" and selector.items() <= r["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert backends, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            for c in backends:
                resolve_port(c, port.get("targetPort", port["port"]))
    for r in resources:
        if r["kind"] == "Deployment":
            labels = r["spec"]["template"]["metadata"]["labels"]
            assert r["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_gateway_talks_to_the_triton_service_over_grpc(rendered):
    resources = rendered["triton"]
    env = gateway_env(resources)
    assert env["D2V_ENGINE"] == "triton"
    assert env["D2V_TRITON_PROTOCOL"] == "grpc"
    host, port = env["D2V_TRITON_URL"].rsplit(":", 1)
    service = one(resources, "Service", host.split(".")[0])
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["port"] == int(port)
    # The gateway still reads model.json from the store: both variants mount it.
    for overlay in OVERLAYS:
        env = gateway_env(rendered[overlay])
        _, gw = next((d, c) for d, c in containers(rendered[overlay]) if is_gateway(c))
        assert any(m["mountPath"] == env["D2V_STORE"] for m in gw["volumeMounts"])


# ---------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifest_env_names_are_server_settings(overlay, rendered):
    known = setting_env_names()
    used: set[str] = set()
    resources = rendered[overlay]
    for r in resources:
        if r["kind"] == "ConfigMap":
            used |= set(r.get("data", {}))
    for _, c in containers(resources):
        used |= {e["name"] for e in c.get("env", [])}
    d2v_names = {n for n in used if n.startswith("D2V_")}
    assert d2v_names, "no D2V_* settings in the manifests"
    assert d2v_names <= known, f"not server settings: {sorted(d2v_names - known)}"


def test_job_env_names_and_commands(parser):
    known = setting_env_names()
    for path in sorted((K8S / "jobs").glob("*.yaml")):
        for job in load_yaml(path):
            for c in job["spec"]["template"]["spec"]["containers"]:
                assert {e["name"] for e in c.get("env", []) if e["name"].startswith("D2V_")} <= known
                command = c.get("command", []) + c.get("args", [])
                if command[0] == "d2v":
                    parse_d2v(parser, command)
                else:  # a shell script: check each d2v command line in it
                    script = command[-1].replace("\\\n", " ")
                    lines = [ln.strip() for ln in script.splitlines() if ln.strip().startswith("d2v ")]
                    assert lines, f"{path}: no d2v command"
                    for line in lines:
                        args = parse_d2v(parser, shlex.split(line))
                        if args.command == "export":
                            assert args.format == "triton"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_values_validate_as_server_settings(overlay, rendered, monkeypatch):
    from d2v.server.settings import ServerSettings

    for name in [n for n in os.environ if n.startswith("D2V_")]:
        monkeypatch.delenv(name)
    for key, value in gateway_env(rendered[overlay]).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("D2V_API_KEYS", "k1,k2")  # from the Secret in a cluster
    settings = ServerSettings()
    assert str(settings.store) == "/data/models"
    assert len(settings.api_keys) == 2
    assert settings.engine == ("triton" if overlay == "triton" else "onnxruntime")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_shutdown_fits_the_grace_period(overlay, rendered):
    from d2v.server.settings import ServerSettings

    resources = rendered[overlay]
    deployment = one(resources, "Deployment", "d2v-gateway")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    graceful = float(
        gateway_env(resources).get("D2V_GRACEFUL_TIMEOUT_S", ServerSettings.model_fields["graceful_timeout_s"].default)
    )
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    env = gateway_env(resources)
    grpc_on = int(env.get("D2V_GRPC_PORT", ServerSettings.model_fields["grpc_port"].default)) != 0
    drains = 2 if grpc_on else 1  # HTTP drains first, then gRPC, each up to D2V_GRACEFUL_TIMEOUT_S
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drains * graceful + 5
    secret = next(e for e in container["env"] if e["name"] == "D2V_API_KEYS")["valueFrom"]["secretKeyRef"]
    assert secret["name"] and not secret.get("optional", False), "API keys come from a required Secret"
    assert spec["securityContext"]["runAsNonRoot"] is True


# ---------------------------------------------------------------------------------------- Dockerfile
@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(ROOT / "Dockerfile")


def test_default_target_is_the_torch_free_serving_image(dockerfile):
    global_args, stages = dockerfile
    assert stages[-1].name == "serve", "the last stage is what `docker build .` builds"
    assert all(s.base.startswith("python:") or s.base in {x.name for x in stages} for s in stages)
    assert global_args["PYTHON_VERSION"] == "3.11"
    deps = _load_module(DEPLOY / "docker" / "pyproject_deps.py", "d2v_pyproject_deps")
    chain = stage_chain(stages, "serve")
    assert "full" not in {s.name for s in chain} and "deps-full" not in {s.name for s in chain}
    for stage in chain:
        for inst in stage.all("RUN"):
            assert not re.search(r"\btorch\b", inst.value.replace("find_spec('torch')", "")), inst.value
            assert "download.pytorch.org" not in inst.value
        if any(i.value.startswith("EXTRAS=") for i in stage.all("ARG")):
            extras = arg_default(stage, global_args, "EXTRAS").split(",")
            reqs = deps.requirements(ROOT / "pyproject.toml", extras)
            names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in reqs}
            assert "torch" not in names and "onnxruntime" in names, names
            assert "tritonclient" in names, "the serving image must support --engine triton"


def test_full_target_installs_cpu_torch_first(dockerfile):
    global_args, stages = dockerfile
    (deps_full,) = [s for s in stages if s.name == "deps-full"]
    runs = [i.value for i in deps_full.all("RUN")]
    torch_run = next(i for i, r in enumerate(runs) if "torch==" in r)
    reqs_run = next(i for i, r in enumerate(runs) if "requirements.txt" in r)
    assert torch_run < reqs_run
    assert arg_default(deps_full, global_args, "TORCH_INDEX_URL").endswith("/whl/cpu")
    assert "--index-url" in runs[torch_run]
    deps = _load_module(DEPLOY / "docker" / "pyproject_deps.py", "d2v_pyproject_deps")
    extras = arg_default(deps_full, global_args, "EXTRAS_FULL").split(",")
    names = {
        re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in deps.requirements(ROOT / "pyproject.toml", extras)
    }
    assert {"torch", "onnx", "onnxruntime"} <= names


@pytest.mark.parametrize("target", ["serve", "full"])
def test_runtime_stage_cmd_user_healthcheck(target, dockerfile, parser):
    _, stages = dockerfile
    (stage,) = [s for s in stages if s.name == target]
    cmd = exec_form(stage.last("CMD"))
    args = parse_d2v(parser, cmd)
    assert args.command == "serve"
    assert args.host == "0.0.0.0", "inside a container the server must bind all interfaces"
    exposed = {int(p.split("/")[0]) for i in stage.all("EXPOSE") for p in i.value.split()}
    assert args.port in exposed
    from d2v.server.settings import ServerSettings

    grpc_port = args.grpc_port if args.grpc_port is not None else ServerSettings.model_fields["grpc_port"].default
    assert grpc_port in exposed, "the image must expose the gRPC port too"
    check = exec_form(stage.last("HEALTHCHECK"))
    url = check[-1]
    assert re.fullmatch(rf"http://127\.0\.0\.1:{args.port}/livez", url), url
    script = check[1]
    copied = {c.value.split()[-1]: copy_sources(c) for c in stage.all("COPY")}
    assert script in copied, f"the health check script {script} is not copied into the image"
    user = stage.last("USER").value.split(":")[0]
    assert user not in ("root", "0")
    assert stage.last("STOPSIGNAL").value == "SIGTERM"
    env = env_of(stage)
    assert env["D2V_HOME"] == "/data"
    assert set(env) & {n for n in env if n.startswith("D2V_")} <= setting_env_names()
    volumes = [json.loads(v.value) if v.value.startswith("[") else v.value.split() for v in stage.all("VOLUME")]
    assert [env["D2V_HOME"]] in volumes, "the model store ($D2V_HOME/models) lives on a volume"


def test_image_drain_matches_the_deployment(dockerfile, rendered):
    _, stages = dockerfile
    serve = next(s for s in stages if s.name == "serve")
    image = float(env_of(serve)["D2V_GRACEFUL_TIMEOUT_S"])
    for overlay in OVERLAYS:
        assert float(gateway_env(rendered[overlay])["D2V_GRACEFUL_TIMEOUT_S"]) == image


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_copy_sources_exist_in_the_build_context(path):
    _, stages = parse_dockerfile(path)
    stage_names = {s.name for s in stages}
    copies = [i for s in stages for i in s.all("COPY") + s.all("ADD")]
    assert copies
    for inst in copies:
        assert inst.keyword != "ADD", "use COPY (ADD fetches URLs and unpacks archives)"
        if re.search(r"--from=(\S+)", inst.value):
            assert re.search(r"--from=(\S+)", inst.value).group(1) in stage_names
            continue
        for src in copy_sources(inst):
            rel = src.rstrip("/")
            assert (ROOT / rel).exists(), f"{path.name}: COPY {src}: no such file in the build context"
            assert not dockerignored(rel), f"{path.name}: COPY {src} is excluded by .dockerignore"


def test_regular_install_ships_every_subpackage():
    """The images install the project as a wheel (not editable), which holds only the packages pyproject.toml
    lists: a sub-package missing there works in the dev checkout and crashes the container at start."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    present = set()
    for package, directory in setuptools["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / directory)
            if "__pycache__" not in rel.parts:
                present.add(".".join([package, *rel.parts]))
    assert present <= listed, f"add to [tool.setuptools] packages: {sorted(present - listed)}"


@pytest.mark.parametrize("target", ["build-serve", "full"])
def test_images_copy_every_source_folder_they_install(target, dockerfile):
    """``pip install .`` in an image builds from the folders COPY put there: a package-dir folder left out
    (say, a new floor such as core/ or runtime/) installs an incomplete package that fails at start."""
    import tomllib

    _, stages = dockerfile
    (stage,) = [s for s in stages if s.name == target]
    copied = {c.value.split()[-1].rstrip("/") for c in stage.all("COPY") if "--from" not in c.value}
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    needed = {folder.split("/")[0] for folder in package_dirs.values()}
    assert needed <= copied, f"{target}: COPY {sorted(needed - copied)}"


def test_dockerignore_keeps_local_state_out_and_sources_in():
    for excluded in (".git", ".venv", ".venv-triton", "data/generated", "runs", ".pytest_cache", "x/__pycache__"):
        assert dockerignored(excluded), excluded
    for kept in ("pyproject.toml", "README.md", "server/app.py", "data/images", "deploy/docker/healthcheck.py"):
        assert not dockerignored(kept), kept


def test_triton_image(parser):
    global_args, stages = parse_dockerfile(DEPLOY / "triton" / "Dockerfile")
    (stage,) = stages
    assert stage.base == "nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3"
    assert re.fullmatch(r"\d{2}\.\d{2}", global_args["TRITON_VERSION"]), "pin the release as a build ARG"
    cmd = exec_form(stage.last("CMD"))
    assert cmd[0] == "tritonserver"
    assert {"--model-control-mode=none", "--strict-readiness=true"} <= set(cmd)
    assert stage.last("USER").value.split(":")[0] not in ("root", "0")
    assert {int(p) for i in stage.all("EXPOSE") for p in i.value.split()} == {8000, 8001, 8002}
    # The python-backend preprocess model imports these (third-party imports of the shipped code).
    shipped = [*sorted((ROOT / "core").glob("*.py")), *sorted((ROOT / "models" / "preprocessing").glob("*.py"))]
    imports: set[str] = set()
    for path in shipped + [ROOT / "export" / "triton_models" / "preprocess.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imports |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imports.add(node.module.split(".")[0])
    third_party = imports - set(sys.stdlib_module_names) - {"d2v", "triton_python_backend_utils", "__future__"}
    dist = {"PIL": "pillow"}
    reqs = (DEPLOY / "triton" / "requirements.txt").read_text().lower()
    for module in third_party:
        assert re.search(rf"^{dist.get(module, module).lower()}\b", reqs, re.M), f"{module} missing"
    ort = arg_default(stage, global_args, "ORT_PACKAGE")
    assert ort.startswith("onnxruntime"), "the python-backend encoder needs ONNX Runtime"


# --------------------------------------------------------------------------------------- helpers' own
def test_pyproject_deps_expands_self_references(tmp_path):
    deps = _load_module(DEPLOY / "docker" / "pyproject_deps.py", "d2v_pyproject_deps")
    reqs = deps.requirements(ROOT / "pyproject.toml", ["train"])
    assert any(r.startswith("torch") for r in reqs) and any(r.startswith("safetensors") for r in reqs)
    assert not any(r.startswith("data2vec-stack") for r in reqs)
    with pytest.raises(SystemExit):
        deps.requirements(ROOT / "pyproject.toml", ["no-such-extra"])


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/livez" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_script():
    health = _load_module(DEPLOY / "docker" / "healthcheck.py", "d2v_healthcheck")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert health.check(f"http://127.0.0.1:{port}/livez") == 0
        assert health.check(f"http://127.0.0.1:{port}/readyz") == 1
    finally:
        server.shutdown()
        server.server_close()
    assert health.check(f"http://127.0.0.1:{port}/livez", timeout=1) == 1  # nothing listens any more


# ----------------------------------------------------------------------------------------------- compose
COMPOSE = DEPLOY / "compose" / "compose.yaml"


def _compose_env(value: str) -> str:
    """``${VAR:-default}`` -> default, ``${VAR:?message}`` -> a stand-in value (as the operator must set)."""
    value = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z0-9_]+:\?[^}]*\}", "set-by-operator", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_compose_gateway_serves_both_protocols_in_triton_mode(compose, parser):
    from d2v.server.settings import ServerSettings

    gateway, triton = compose["services"]["gateway"], compose["services"]["triton"]
    args = parse_d2v(parser, gateway["command"])
    assert args.command == "serve" and args.host == "0.0.0.0"
    env = {k: _compose_env(str(v)) for k, v in gateway["environment"].items()}
    assert set(env) <= setting_env_names()
    settings = ServerSettings(**{k.removeprefix("D2V_").lower(): v for k, v in env.items()}, port=args.port,
                              grpc_port=args.grpc_port)  # fmt: skip
    assert settings.engine == "triton" and settings.triton_protocol == "grpc" and settings.api_keys
    published = {int(p.rsplit(":", 1)[-1]): p for p in gateway["ports"]}
    assert set(published) == {settings.port, settings.grpc_port}
    assert all(p.startswith("127.0.0.1:") for p in published.values()), "publish on the host's loopback only"
    host, port = settings.triton_url.rsplit(":", 1)
    assert host == "triton" and _flags(triton["command"])["--grpc-port"] == port
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    grace = float(gateway["stop_grace_period"].rstrip("s"))
    assert grace >= 2 * settings.graceful_timeout_s + 5  # HTTP, then gRPC drain
    volumes = [_compose_env(v) for v in gateway["volumes"]]
    store = next(v for v in volumes if v.split(":")[1] == str(settings.store))
    assert store.endswith(":ro")
    assert gateway["build"]["target"] == "serve"


def test_compose_triton_has_the_repository_and_a_gpu(compose):
    triton = compose["services"]["triton"]
    assert triton["command"][0] == "tritonserver"
    flags = _flags(triton["command"])
    repo = next(v for v in map(_compose_env, triton["volumes"]) if v.split(":")[1] == flags["--model-repository"])
    assert repo.endswith(":ro")
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] >= 1
    assert (DEPLOY / "compose" / triton["build"]["context"] / triton["build"]["dockerfile"]).resolve() == (
        DEPLOY / "triton" / "Dockerfile"
    )
    assert {flags["--http-port"], flags["--grpc-port"], flags["--metrics-port"]} <= set(triton["expose"])
    health = " ".join(triton["healthcheck"]["test"])
    assert f"127.0.0.1:{flags['--http-port']}/v2/health/ready" in health
    assert float(triton["stop_grace_period"].rstrip("s")) > float(flags["--exit-timeout-secs"])


def test_compose_prometheus_scrapes_gateway_and_triton(compose, parser, tmp_path):
    from fastapi.testclient import TestClient

    from d2v.server.app import create_app
    from d2v.server.settings import ServerSettings

    services = compose["services"]
    prom = services["prometheus"]
    config_mount = next(v for v in prom["volumes"] if v.split(":")[1] == "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load((COMPOSE.parent / config_mount.split(":")[0]).read_text())
    targets = {
        job["job_name"]: (job.get("metrics_path", "/metrics"), job["static_configs"][0]["targets"])
        for job in config["scrape_configs"]
    }
    gateway_port = parse_d2v(parser, services["gateway"]["command"]).port
    path, hosts = targets["d2v-gateway"]
    assert hosts == [f"gateway:{gateway_port}"]
    client = TestClient(create_app(ServerSettings(store=tmp_path, grpc_port=0), engines=[]))
    assert client.get(path).status_code == 200  # a real route, and it needs no API key
    assert targets["triton"][1] == [f"triton:{_flags(services['triton']['command'])['--metrics-port']}"]
