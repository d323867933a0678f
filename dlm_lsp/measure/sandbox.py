"""Run model-generated Python in a sandbox: the only place generated code is ever executed.

A program runs in a separate interpreter (``python -I -S``: no user site, no ``PYTHON*``
variables, no site-packages) with:

* a wall-clock timeout; on expiry the whole process tree is killed;
* rlimits: address space (``RLIMIT_AS``), CPU seconds, processes (``RLIMIT_NPROC``), file size
  (bounds what it can write, its captured output included), open files, no core dumps;
* a fresh **network namespace** when this machine allows one (``unshare --net``: as root, or
  through an unprivileged user namespace), and otherwise sockets refused by an audit hook
  (`sys.addaudithook`) installed before the program runs;
* a fresh **pid namespace** when available, so every process it forks dies with it, and a
  ``pids`` cgroup when one can be created, so a fork bomb hits a hard process ceiling even as
  root (``RLIMIT_NPROC`` does not bind root);
* a temporary working directory, removed afterwards; a clean environment; no inherited file
  descriptors (stdin is ``/dev/null``; stdout and stderr go to files read back bounded).

What was in force is reported in `SandboxResult.isolation`, so a run records its guarantees.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Outcome = Literal["passed", "failed", "timeout", "memory", "killed"]

# Run before the program. The audit hook is installed only when no network namespace is in
# force (or when the caller asks for it); it refuses every socket operation.
_BOOTSTRAP = """\
import sys
if {block_sockets!r}:
    def _refuse_network(event, args):
        if event.startswith("socket."):
            raise PermissionError("network access is disabled in the sandbox")
    sys.addaudithook(_refuse_network)
sys.argv = ["main.py"]
import runpy
runpy.run_path("main.py", run_name="__main__")
"""


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """What one sandboxed run may use."""

    timeout_s: float = 10.0  # wall clock, the whole run
    cpu_s: int = 10  # RLIMIT_CPU (SIGXCPU, then SIGKILL)
    memory_mb: int = 1024  # RLIMIT_AS, virtual address space
    max_processes: int = 32  # pids cgroup / RLIMIT_NPROC
    max_file_mb: int = 16  # RLIMIT_FSIZE: any file it writes, its stdout/stderr included
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_chars: int = 16_000  # how much of stdout/stderr is kept in the result


@dataclass(frozen=True, kw_only=True)
class SandboxResult:
    """How a sandboxed program ended."""

    outcome: Outcome
    returncode: int | None
    stdout: str
    stderr: str
    elapsed_s: float
    isolation: dict[str, bool] = field(default_factory=dict)  # mechanism -> in force

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


@functools.cache
def _unshare_flags() -> tuple[str, ...] | None:
    """The `unshare` arguments that work here for a new net + pid namespace, or None.

    Root can unshare directly; others need a user namespace (``--map-root-user``). Probed once
    by running ``true`` under each candidate.
    """
    binary = shutil.which("unshare")
    if binary is None:
        return None
    candidates = [
        (binary, "--net", "--pid", "--fork", "--kill-child"),
        (binary, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"),
        (binary, "--net"),
        (binary, "--user", "--map-root-user", "--net"),
    ]
    for flags in candidates:
        try:
            probe = subprocess.run(
                [*flags, "--", "/bin/sh", "-c", "exit 0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=10, env={"PATH": "/usr/bin:/bin"},
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return flags
    log.info("no network namespace available: sockets will be refused by an audit hook")
    return None


class _PidsCgroup:
    """A throw-away ``pids`` cgroup (v1 or v2) capping the sandbox's process count."""

    def __init__(self, max_processes: int) -> None:
        self.path: Path | None = None
        for root in self._roots():
            path = root / f"dlm-sandbox-{uuid.uuid4().hex[:12]}"
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                (path / "pids.max").write_text(str(max_processes))
                self.path = path
                return
            except OSError:
                self._remove(path)

    @staticmethod
    def _roots() -> list[Path]:
        v1 = Path("/sys/fs/cgroup/pids")
        roots = [v1] if (v1 / "cgroup.procs").exists() else []
        v2 = Path("/sys/fs/cgroup")
        controllers = v2 / "cgroup.controllers"
        if controllers.exists():
            try:
                own = Path("/proc/self/cgroup").read_text().splitlines()
                unified = next(line.split(":", 2)[2] for line in own if line.startswith("0::"))
                roots.append(v2 / unified.lstrip("/"))
            except (OSError, StopIteration):
                pass
        return roots

    def join_self(self) -> None:
        """Move the calling process into the cgroup (called in the child before exec)."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def kill_all(self) -> None:
        """SIGKILL every process still in the cgroup, until it is empty (bounded wait)."""
        if self.path is None:
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)

    def close(self) -> None:
        if self.path is not None:
            self.kill_all()
            self._remove(self.path)
            self.path = None

    @staticmethod
    def _remove(path: Path) -> None:
        for _ in range(50):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        log.warning("could not remove cgroup %s", path)


def _set_limits(limits: SandboxLimits, cgroup: _PidsCgroup) -> None:
    """In the child, between fork and exec: join the cgroup, then apply the rlimits."""
    cgroup.join_self()
    mb = 1024 * 1024
    for which, value in (
        (resource.RLIMIT_AS, limits.memory_mb * mb),
        (resource.RLIMIT_CPU, max(1, limits.cpu_s)),
        (resource.RLIMIT_NPROC, limits.max_processes),
        (resource.RLIMIT_FSIZE, limits.max_file_mb * mb),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))


def _read_bounded(path: Path, limit: int) -> str:
    with open(path, "rb") as stream:
        data = stream.read(limit * 4 + 1)
    text = data.decode("utf-8", errors="replace")
    if len(text) > limit or len(data) > limit * 4:
        text = text[:limit] + "\n[... output truncated ...]"
    return text


def _kill_tree(process: subprocess.Popen, cgroup: _PidsCgroup) -> None:
    """Kill the session the sandbox leads, then anything left in its cgroup."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    cgroup.kill_all()


def _classify(returncode: int, stderr: str, timed_out: bool) -> tuple[Outcome, str]:
    """The outcome and the program's own stderr.

    Under `unshare --fork` a program killed by a signal (SIGXCPU at the CPU limit, SIGKILL)
    shows as unshare failing to re-raise that signal: its last stderr line, which is removed.
    """
    lines = stderr.rstrip("\n").split("\n")
    by_signal = returncode < 0 or returncode > 128
    if returncode != 0 and lines and lines[-1].startswith("unshare: "):
        by_signal = True
        stderr = "\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else "")
    if timed_out:
        return "timeout", stderr
    if returncode == 0:
        return "passed", stderr
    if "MemoryError" in stderr[-2000:]:
        return "memory", stderr
    return ("killed" if by_signal else "failed"), stderr


def run_python(
    source: str,
    limits: SandboxLimits | None = None,
    *,
    block_sockets: bool | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run `source` as ``__main__`` in the sandbox and say how it ended.

    `block_sockets`: None installs the socket-refusing audit hook only when no network
    namespace is available; True or False force it on or off (tests use False to check the
    namespace alone).
    """
    limits = limits or SandboxLimits()
    unshare = _unshare_flags()
    net_namespace = unshare is not None
    pid_namespace = unshare is not None and "--pid" in unshare
    hook = (not net_namespace) if block_sockets is None else block_sockets
    cgroup = _PidsCgroup(limits.max_processes)
    workdir = Path(tempfile.mkdtemp(prefix="dlm-sandbox-"))
    outdir = Path(tempfile.mkdtemp(prefix="dlm-sandbox-out-"))
    try:
        (workdir / "main.py").write_text(source, encoding="utf-8")
        interpreter = python or sys.executable
        command = [interpreter, "-I", "-S", "-B", "-c", _BOOTSTRAP.format(block_sockets=hook)]
        if unshare is not None:
            command = [*unshare, "--", *command]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8",
        }
        started = time.monotonic()
        timed_out = False
        with open(outdir / "stdout", "wb") as out, open(outdir / "stderr", "wb") as err:
            process = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                close_fds=True,
                start_new_session=True,
                preexec_fn=functools.partial(_set_limits, limits, cgroup),
            )
            try:
                returncode = process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_tree(process, cgroup)
                returncode = process.wait()
            # Descendants may outlive a finished program (daemonised children): end them too.
            _kill_tree(process, cgroup)
        elapsed = time.monotonic() - started
        stdout = _read_bounded(outdir / "stdout", limits.output_chars)
        stderr = _read_bounded(outdir / "stderr", limits.output_chars)
        outcome, stderr = _classify(returncode, stderr, timed_out)
        return SandboxResult(
            outcome=outcome,
            returncode=None if timed_out else returncode,
            stdout=stdout,
            stderr=stderr,
            elapsed_s=elapsed,
            isolation={
                "net_namespace": net_namespace,
                "pid_namespace": pid_namespace,
                "socket_audit_hook": hook,
                "pids_cgroup": cgroup.path is not None,
                "rlimits": True,
            },
        )
    finally:
        cgroup.close()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(outdir, ignore_errors=True)


def isolation_report() -> dict[str, bool]:
    """Which isolation mechanisms this machine offers (for `dlm-lsp eval` output)."""
    unshare = _unshare_flags()
    cgroup = _PidsCgroup(1)
    try:
        has_cgroup = cgroup.path is not None
    finally:
        cgroup.close()
    return {
        "net_namespace": unshare is not None,
        "pid_namespace": unshare is not None and "--pid" in unshare,
        "pids_cgroup": has_cgroup,
    }
