"""The WorkerRuntime edge: where a worker lives (a process group, or a Docker container)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from config.errors import AppError

# Every worker process (or container) carries this variable / label, so anything we started can
# be found again: by the reaper, and by tests looking for orphans.
SESSION_MARKER = "FACTORY_WORKER_SESSION"
# ... and this one names the factory installation that owns it, so a sweep never touches workers
# of another installation on the same host (another FACTORY_HOME, a test run beside it).
INSTANCE_MARKER = "FACTORY_INSTANCE"


def factory_instance() -> str:
    """This installation's id: FACTORY_INSTANCE if set, else derived from FACTORY_HOME."""
    from django.conf import settings

    if settings.FACTORY_INSTANCE:
        return settings.FACTORY_INSTANCE
    return hashlib.sha1(str(settings.FACTORY_HOME).encode()).hexdigest()[:12]


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


@dataclass(frozen=True)
class WorkerSpec:
    """What a new worker is made of. ``labels`` identify it (session, project, owning node)."""

    session_id: int
    workspace: Path
    env: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    cpu_limit: float | None = None  # CPUs
    memory_limit_mb: int | None = None
    # Host directories the worker shares at the same path (read-write), e.g. the local git
    # remotes of the embedded default. A runtime on this host sees them anyway.
    shared_dirs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class WorkerInfo:
    """A worker found on the host, whatever the database says about it."""

    handle: str
    session_id: int | None
    labels: dict[str, str]
    running: bool


@dataclass(frozen=True)
class WorkerStats:
    cpu_seconds: float | None
    memory_bytes: int | None


class WorkerRuntime(Protocol):
    name: str
    # The Python inside the worker, and the PYTHONPATH under which the factory's in-worker code
    # (the scripted agent, later the orchestrator CLI) is importable there.
    python: str
    factory_path: str

    def create(self, spec: WorkerSpec) -> str:
        """Start the worker; return its handle (container id, process group id)."""

    def exec(self, handle: str, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> ExecResult:
        """Run a command inside the worker and wait for it, at most ``timeout`` seconds."""

    def pause(self, handle: str) -> None: ...

    def unpause(self, handle: str) -> None: ...

    def terminate(self, handle: str) -> None:
        """Stop the worker and everything in it. Terminating a gone worker is not an error."""

    def is_alive(self, handle: str) -> bool: ...

    def stats(self, handle: str) -> WorkerStats: ...

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker of this installation (factory_instance()) the runtime can see."""
