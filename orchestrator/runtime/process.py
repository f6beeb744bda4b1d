"""The process runtime: a worker is a process group on this machine.

The group's leader is a small holder process that only sleeps; commands run inside the worker
join its group, so SIGSTOP/SIGCONT to the group pause and resume everything in it, and killing
the group terminates all of it. It is the embedded default's stand-in for a container.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog

from orchestrator.procs import process_state, signal_group
from orchestrator.runtime.base import SESSION_MARKER, ExecResult, WorkerGone

log = structlog.get_logger(__name__)

_HOLDER = "import time\nwhile True:\n    time.sleep(3600)\n"


class ProcessRuntime:
    name = "process"

    def create(self, *, session_id: int, workspace: Path, env: dict[str, str]) -> str:
        workspace.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER],
            cwd=workspace,
            env={**env, SESSION_MARKER: str(session_id)},
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
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, process_group=pgid,
            )
        except (PermissionError, ProcessLookupError, subprocess.SubprocessError) as exc:
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
