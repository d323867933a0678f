"""Run the `tritonserver` binary that the `nvidia-pytriton` wheel bundles, on loopback.

For tests, benchmarks and a machine without the Triton container: the same binary serves a
plain model repository on the CPU. Two things make it work (shared/recipes/triton.md):
a backend folder with the Python backend and the stub built for this Python version, and
LD_LIBRARY_PATH starting with this interpreter's own lib folder, so that the stub loads the
libpython that matches this interpreter's standard library.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path


# log lines after which the server would wait for ever for a model that cannot load
FATAL = ("error while loading shared libraries", "failed to load '", "Stub process is unhealthy")


class TritonUnavailable(RuntimeError):
    """nvidia-pytriton is not installed, or its server did not start."""


def bundled_root() -> Path:
    """The folder of pytriton's bundled tritonserver."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonUnavailable("pip install nvidia-pytriton (or dlm-lsp[remote])") from exc
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TritonUnavailable(f"{root}/bin/tritonserver is missing")
    return root


def backend_folder(dest: Path) -> Path:
    """A --backend-directory with the Python backend and this Python's stub, under `dest`."""
    root = bundled_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonUnavailable(f"no Python backend stub for Python {version}")
    python = dest / "python"
    if not python.exists():
        shutil.copytree(root / "backends" / "python", python)
        shutil.copy2(stub, python / stub.name)
    return dest


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTriton:
    """One tritonserver process on loopback serving `repository`; stop() ends it by its pid."""

    def __init__(self, repository: str | Path, workdir: str | Path, *,
                 log_path: str | Path | None = None) -> None:
        self.repository = Path(repository)
        self.workdir = Path(workdir)
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log_path = Path(log_path or self.workdir / "tritonserver.log")
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout_s: float = 120.0) -> "LocalTriton":
        root = bundled_root()
        backends = backend_folder(self.workdir / "backends")
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        wheel_libs = root.parent.parent / "nvidia_pytriton.libs"  # the copied stub's RPATH
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, str(wheel_libs), env.get("LD_LIBRARY_PATH", "")) if p)
        # the stub's Python finds this environment's packages through PATH
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        command = [
            str(root / "bin" / "tritonserver"), "--model-repository", str(self.repository),
            "--backend-directory", str(backends), "--http-address", "127.0.0.1",
            "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), "--allow-sagemaker", "false",
            "--allow-vertex-ai", "false", "--exit-on-error", "true",
        ]
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonUnavailable(f"tritonserver exited: {self.tail()}")
            if any(sign in self.tail(100_000) for sign in FATAL):
                self.stop()
                raise TritonUnavailable(f"a model failed to load: {self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TritonUnavailable(f"tritonserver not ready after {timeout_s:.0f} s: {self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def metrics(self) -> str:
        """The Prometheus metrics text."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            return response.read().decode()

    def stop(self) -> None:
        """Stop the server this object started (SIGTERM, then SIGKILL), by its own pid."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if getattr(self, "log", None) is not None:
            self.log.close()

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
