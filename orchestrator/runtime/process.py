"""The process runtime: a worker is a process group on this machine.

The group's leader is a small holder process that only sleeps; commands run inside the worker
join its group, so SIGSTOP/SIGCONT to the group pause and resume everything in it, and killing
the group terminates all of it. It is the embedded default's stand-in for a container.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog
from django.conf import settings

from orchestrator.procs import pids_with_marker, process_state, signal_group
from orchestrator.runtime.base import (
    INSTANCE_MARKER,
    SESSION_MARKER,
    ExecResult,
    WorkerGone,
    WorkerInfo,
    WorkerSpec,
    WorkerStats,
    factory_instance,
)

log = structlog.get_logger(__name__)

_HOLDER = "import time\nwhile True:\n    time.sleep(3600)\n"


class ProcessRuntime:
    """Limits (CPU, memory) are not enforced by this runtime; containers enforce them."""

    name = "process"
    python = sys.executable

    @property
    def factory_path(self) -> str:
        return str(settings.BASE_DIR)

    def create(self, spec: WorkerSpec) -> str:
        spec.workspace.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER],
            cwd=spec.workspace,
            env={**spec.env, SESSION_MARKER: str(spec.session_id), INSTANCE_MARKER: factory_instance()},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        return str(holder.pid)

    def exec(self, handle: str, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> ExecResult:
        pgid = int(handle)
        if not self.is_alive(handle):
            raise WorkerGone(f"Worker process group {pgid} is gone.")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                process_group=pgid,
            )
        except FileNotFoundError as exc:  # like a shell: the command (or its directory) is missing
            return ExecResult(127, "", f"{argv[0]}: {exc.strerror}")
        except PermissionError as exc:
            if exc.errno == errno.EACCES:  # the command is not executable
                return ExecResult(126, "", f"{argv[0]}: {exc.strerror}")
            raise WorkerGone(f"Cannot run inside worker process group {pgid}: {exc}") from exc
        except (ProcessLookupError, subprocess.SubprocessError) as exc:
            # Joining a group is only possible from the session that created it; a worker made
            # by a process that has since died cannot be joined and must be replaced.
            raise WorkerGone(f"Cannot run inside worker process group {pgid}: {exc}") from exc
        try:
            out, err = proc.communicate(timeout=timeout)
            return ExecResult(proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return ExecResult(-9, out, err, timed_out=True)

    def pause(self, handle: str) -> None:
        if not signal_group(int(handle), signal.SIGSTOP):
            raise WorkerGone(f"Worker process group {handle} is gone.")

    def unpause(self, handle: str) -> None:
        if not signal_group(int(handle), signal.SIGCONT):
            raise WorkerGone(f"Worker process group {handle} is gone.")

    def terminate(self, handle: str) -> None:
        pgid = int(handle)
        signal_group(pgid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        signal_group(pgid, signal.SIGKILL)
        _reap(pgid)

    def is_alive(self, handle: str) -> bool:
        try:
            pgid = int(handle)
        except ValueError:
            return False
        return process_state(pgid) not in (None, "Z", "X")

    def stats(self, handle: str) -> WorkerStats:
        """CPU time and resident memory of the group's leader, from /proc."""
        pid = int(handle)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise WorkerGone(f"Worker process group {pid} is gone.") from exc
        ticks = os.sysconf("SC_CLK_TCK")
        rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None)
        return WorkerStats(cpu_seconds=(int(stat[11]) + int(stat[12])) / ticks, memory_bytes=rss)

    def list_workers(self) -> list[WorkerInfo]:
        """Worker holders on this machine: marked processes that lead their own group."""
        found = []
        mine = set(pids_with_marker(INSTANCE_MARKER, factory_instance()))
        for pid in pids_with_marker(SESSION_MARKER):
            if pid not in mine:
                continue  # another installation's worker
            try:
                if os.getpgid(pid) != pid:
                    continue  # a command inside a worker, not a worker
            except ProcessLookupError:
                continue
            session = _marker_value(pid)
            found.append(WorkerInfo(handle=str(pid), session_id=session, labels={}, running=process_state(pid) != "T"))
        return found


def _marker_value(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    prefix = f"{SESSION_MARKER}=".encode()
    value = next((item[len(prefix) :] for item in environ if item.startswith(prefix)), b"")
    return int(value) if value.isdigit() else None


def _reap(pid: int, wait: float = 2.0) -> None:
    """Collect the holder if it is our child, so it does not linger as a zombie."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not our child: init reaps it
        if done:
            return
        time.sleep(0.02)
