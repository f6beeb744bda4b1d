"""The WorkerRuntime edge: where a worker lives (a process group here, a container later)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from config.errors import AppError

# Every worker process carries this variable, so anything we started can be found again.
SESSION_MARKER = "FACTORY_WORKER_SESSION"


class WorkerGone(AppError):
    """The worker behind a session no longer exists (or cannot be reached from this process)."""

    code = "worker_gone"


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class WorkerRuntime(Protocol):
    name: str

    def create(self, *, session_id: int, workspace: Path, env: dict[str, str]) -> str:
        """Start the worker; return its handle (container id, process group id)."""

    def exec(self, handle: str, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> ExecResult:
        """Run a command inside the worker and wait for it, at most ``timeout`` seconds."""

    def pause(self, handle: str) -> None: ...

    def unpause(self, handle: str) -> None: ...

    def terminate(self, handle: str) -> None:
        """Stop the worker and everything in it. Terminating a gone worker is not an error."""

    def is_alive(self, handle: str) -> bool: ...
