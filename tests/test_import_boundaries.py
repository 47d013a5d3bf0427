"""The floors of README.md ("Layout"), enforced: every first-party import points down, none closes a loop.

The import graph is read from the source (``ast``), so a function-level (lazy) import counts like a
top-level one, and ``importlib.import_module("d2v....")`` with a literal name counts too. Checked:

* each module imports only from its own floor and the floors listed below it in ``FLOORS``;
* there is no import circle anywhere, lazy imports included (``from pkg import submodule`` is an edge to
  the submodule, not to ``pkg``'s ``__init__``);
* the torch-free floors (core, preprocessing, runtime, server, extract, the SDK) never name torch,
  transformers or fairseq, not even lazily; and importing all of their modules in a fresh interpreter
  loads neither torch nor any training or export module;
* ``d2v.cli`` builds its whole parser without torch (``d2v embed`` starts fast), checked in the same
  process that built it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# floor -> (module prefixes, floors it may import besides itself). The longest matching prefix wins.
FLOORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "root": (("d2v",), ()),  # the package __init__: a version string, imported first by every module
    "core": (("d2v.core",), ("root",)),
    "preprocessing": (("d2v.models.preprocessing",), ("root", "core")),
    "models": (("d2v.models",), ("root", "core", "preprocessing")),
    "training": (("d2v.training",), ("root", "core", "preprocessing", "models")),
    # export measures what it wrote with the runtime's engines (model.json ``calibration``)
    "export": (("d2v.export",), ("root", "core", "preprocessing", "models", "runtime")),
    "runtime": (("d2v.runtime",), ("root", "core", "preprocessing")),
    "server": (("d2v.server",), ("root", "core", "preprocessing", "runtime")),
    "extract": (("d2v.extract",), ("root", "core", "preprocessing", "runtime", "sdk")),
    "sdk": (("d2v_client",), ()),
    "workflows": (
        ("d2v.workflows",),
        ("root", "core", "preprocessing", "models", "training", "export", "runtime", "server", "extract", "sdk"),
    ),
    "cli": (
        ("d2v.cli", "d2v.__main__"),
        (
            "root",
            "core",
            "preprocessing",
            "models",
            "training",
            "export",
            "runtime",
            "server",
            "extract",
            "sdk",
            "workflows",
        ),
    ),
}
TORCH_FREE = ("root", "core", "preprocessing", "runtime", "server", "extract", "sdk")
TORCH_NAMES = ("torch", "torchaudio", "torchvision", "transformers", "fairseq")


def package_dirs() -> dict[str, Path]:
    """Import package -> folder, from pyproject's ``package-dir`` plus the SDK's own distribution."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dirs = {pkg: REPO / folder for pkg, folder in pyproject["tool"]["setuptools"]["package-dir"].items()}
    dirs["d2v_client"] = REPO / "clients" / "d2v_client"
    return dirs


def first_party_modules() -> dict[str, Path]:
    dirs = package_dirs()
    modules: dict[str, Path] = {}
    for pkg, folder in dirs.items():
        nested = [d for p, d in dirs.items() if p != pkg and d.is_relative_to(folder)]
        for path in folder.rglob("*.py"):
            if any(path.is_relative_to(d) for d in nested):
                continue  # another package-dir entry owns it
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([pkg, *parts])] = path
    return modules


def _imported_names(module: str, path: Path, tree: ast.AST) -> set[str]:
    """Every dotted name an import statement (at any depth) or a literal ``import_module`` call names."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # ``from X import a`` names ``X.a``: the submodule when ``a`` is one, else (resolved below) X itself
            names |= {f"{base}.{a.name}" for a in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(first-party edges, third-party top-level names) per module."""
    modules = first_party_modules()
    edges: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets, others = set(), set()
        for name in _imported_names(module, path, ast.parse(path.read_text(), str(path))):
            target = name
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                if target != module:
                    targets.add(target)
            else:
                others.add(name.split(".")[0])
        edges[module], external[module] = targets, others
    return edges, external


def floor_of(module: str) -> str:
    best, length = "", -1
    for floor, (prefixes, _) in FLOORS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = floor, len(prefix)
    assert best, f"{module} belongs to no floor: add it to FLOORS and to README.md's layout table"
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


EDGES, EXTERNAL = import_graph()


def test_every_module_has_a_floor():
    assert len(EDGES) > 100, "the source tree was not found"
    for module in EDGES:
        floor_of(module)


@pytest.mark.parametrize("floor", list(FLOORS))
def test_imports_point_down(floor):
    allowed = {floor, *FLOORS[floor][1]}
    bad = sorted(
        f"{module} -> {target} ({floor_of(target)})"
        for module, targets in EDGES.items()
        if floor_of(module) == floor
        for target in targets
        if floor_of(target) not in allowed
    )
    assert not bad, f"{floor} may import only {sorted(allowed)}:\n" + "\n".join(bad)


def test_no_import_circles():
    assert not cycles(EDGES), "import circles (lazy imports count):\n" + "\n".join(map(str, cycles(EDGES)))


def test_the_cycle_finder_finds_circles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("floor", TORCH_FREE)
def test_torch_free_floors_never_name_torch(floor):
    bad = sorted(
        f"{module} imports {name}"
        for module, names in EXTERNAL.items()
        if floor_of(module) == floor
        for name in names
        if name in TORCH_NAMES
    )
    assert not bad, "\n".join(bad)


def _loaded_after(code: str) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


# Modules of optional extras (Ray, tritonclient) whose absence is fine; every other module must import.
_OPTIONAL = (
    "d2v.extract.ray_job",
    "d2v_client._grpc",
    "d2v_client.grpc_client",
    "d2v_client.async_grpc_client",
    "d2v.runtime.engines.triton",
)


def test_torch_free_floors_load_no_torch():
    modules = sorted(m for m in EDGES if floor_of(m) in TORCH_FREE and m not in _OPTIONAL)
    loaded = _loaded_after(f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)")
    bad = sorted(m for m in loaded if m.split(".")[0] in TORCH_NAMES or floor_of_loaded(m) in ("training", "export"))
    assert not bad, f"the torch-free floors pulled in {bad[:10]}"


def floor_of_loaded(module: str) -> str | None:
    return floor_of(module) if module == "d2v" or module.startswith(("d2v.", "d2v_client")) else None


def test_cli_builds_its_parser_without_torch():
    loaded = _loaded_after(
        "from d2v.cli import build_parser\n"
        "parser = build_parser()\n"
        "parser.parse_args(['embed', 'hello'])\n"
        "parser.parse_args(['serve', '--port', '0'])"
    )
    assert "d2v.cli" in loaded and "d2v.workflows.serve" in loaded  # the parser really was built here
    assert not {m for m in loaded if m.split(".")[0] in TORCH_NAMES}


def test_client_sdk_imports_no_project_package():
    loaded = _loaded_after("import d2v_client")
    assert not any(m == "d2v" or m.startswith("d2v.") for m in loaded)
    assert "torch" not in loaded and "onnxruntime" not in loaded


def test_package_is_d2v():
    import d2v

    assert Path(d2v.__file__).parent == REPO / "d2v"
