"""Print the third-party requirements of ``pyproject.toml`` for a set of extras, one per line.

Used by the Dockerfile to install the dependencies in their own layer *before* the source is copied, so
editing code does not re-download onnxruntime / OpenVINO / torch. Self-references such as
``data2vec-stack[torch]`` inside an extra are expanded recursively; the project itself is never printed.

    python pyproject_deps.py pyproject.toml cpu,triton > requirements.txt

Standard library only (tomllib, Python >= 3.11): it runs in the bare ``python:3.11-slim`` builder.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# PEP 508 name plus optional extras, e.g. "data2vec-stack[cpu, torch]>=0.1" -> ("data2vec-stack", "cpu, torch").
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The base dependencies plus those of ``extras`` (expanded), in order, without duplicates."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    own = _canonical(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = []
    seen_extras: set[str] = set()

    def add(reqs: list[str]) -> None:
        for req in reqs:
            m = _REQ.match(req)
            if m is None:
                raise SystemExit(f"cannot parse requirement {req!r}")
            if _canonical(m.group(1)) == own:  # "data2vec-stack[torch]": expand the named extras
                add_extras([e.strip() for e in (m.group(2) or "").split(",") if e.strip()])
            elif req not in out:
                out.append(req)

    def add_extras(names: list[str]) -> None:
        for name in names:
            if name in seen_extras:
                continue
            if name not in optional:
                raise SystemExit(f"unknown extra {name!r}; pyproject.toml defines {sorted(optional)}")
            seen_extras.add(name)
            add(optional[name])

    add(project.get("dependencies", []))
    add_extras(extras)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: pyproject_deps.py PYPROJECT EXTRAS (comma list, may be empty)", file=sys.stderr)
        return 2
    extras = [e.strip() for e in argv[1].split(",") if e.strip()]
    print("\n".join(requirements(Path(argv[0]), extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
