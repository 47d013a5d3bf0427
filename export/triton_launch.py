"""Start the ``tritonserver`` binary shipped in ``nvidia-pytriton`` on a generated model repository.

Used by the tests (a real server on loopback) and handy for trying a repository locally without
NVIDIA's container. Torch-free, stdlib only; it runs from any interpreter, but the *Triton*
environment (``.venv-triton``: nvidia-pytriton, numpy<2, onnxruntime, tokenizers, Pillow, soundfile,
soxr) is the one whose Python the python-backend stubs embed.

What it does, as measured on the project's machines (docs/platform_facts.md):

- copies the server's ``backends/`` into a scratch dir and installs the python-backend stub built for
  the environment's Python version there (pytriton does the same);
- puts the environment's ``sysconfig`` LIBDIR first on ``LD_LIBRARY_PATH`` (otherwise the stub loads the
  system libpython and model load fails), then pytriton's bundled libs;
- puts the environment's ``bin/`` first on ``PATH`` so the embedded interpreter finds its venv;
- starts the server on the given loopback ports and stops it with SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from d2v.core.errors import ConfigError, Unavailable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TritonEnv:
    """A Python environment with nvidia-pytriton installed (e.g. ``.venv-triton``)."""

    prefix: Path

    def __post_init__(self) -> None:
        # Absolute: tritonserver runs in a scratch cwd, and a relative bin/ on PATH would not find the venv.
        self.prefix = Path(self.prefix).absolute()

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    def probe(self) -> dict:
        """Ask the environment's interpreter where things are (version, LIBDIR, pytriton package)."""
        if not self.python.exists():
            raise ConfigError(f"no Python at {self.python}: create the Triton environment (scripts/setup_triton.sh)")
        code = (
            "import json, sys, sysconfig, importlib.util as u\n"
            "s = u.find_spec('pytriton')\n"
            "print(json.dumps({'version': f'{sys.version_info[0]}.{sys.version_info[1]}',"
            " 'libdir': sysconfig.get_config_var('LIBDIR'),"
            " 'pytriton': list(s.submodule_search_locations)[0] if s else None}))\n"
        )
        out = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, check=True)
        info = json.loads(out.stdout.strip().splitlines()[-1])
        if not info["pytriton"]:
            raise ConfigError(f"{self.prefix} has no nvidia-pytriton (pip install 'nvidia-pytriton==0.7.*')")
        return info


@dataclass
class TritonServer:
    """A running ``tritonserver``; use as a context manager or call :meth:`stop`."""

    repository: Path
    env: TritonEnv
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    _scratch: Path | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, timeout: float = 60.0) -> TritonServer:
        if self.process is not None and self.process.poll() is None:
            raise ConfigError("tritonserver is already running; stop() it first")
        self.repository = Path(self.repository).absolute()  # the server's cwd is a scratch dir
        info = self.env.probe()
        dist = Path(info["pytriton"]) / "tritonserver"
        stub = dist / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
        if not stub.exists():
            raise ConfigError(f"pytriton has no python-backend stub for Python {info['version']}")
        self._scratch = Path(tempfile.mkdtemp(prefix="d2v-triton-"))
        backends = self._scratch / "backends"
        shutil.copytree(dist / "backends", backends)
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        libs = Path(info["pytriton"]).parent / "nvidia_pytriton.libs"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(
            p for p in (info["libdir"], str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = f"{self.env.prefix / 'bin'}:{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)  # the stub must see the Triton environment, not the caller's
        cmd = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={dist / 'caches'}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--strict-readiness=true",
            "--exit-timeout-secs=5",
            *self.extra_args,
        ]
        self.log_path = self.log_path or self._scratch / "tritonserver.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self._scratch)
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise Unavailable(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL as a last resort. Returns the exit status."""
        rc = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                rc = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                rc = self.process.wait()
        elif self.process is not None:
            rc = self.process.returncode
        if self._scratch is not None:
            shutil.rmtree(self._scratch / "backends", ignore_errors=True)
        return rc

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
