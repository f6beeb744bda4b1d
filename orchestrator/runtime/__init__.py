"""Worker runtimes, chosen by name (AgentConfig.runtime, or the WORKER_RUNTIME setting)."""

from __future__ import annotations

from django.conf import settings

from config.errors import PermanentError
from orchestrator.runtime.base import ExecResult, WorkerGone, WorkerRuntime


def get_runtime(name: str | None = None) -> WorkerRuntime:
    name = name or settings.WORKER_RUNTIME
    if name == "process":
        from orchestrator.runtime.process import ProcessRuntime

        return ProcessRuntime()
    if name == "docker":
        from orchestrator.runtime.docker import DockerRuntime

        return DockerRuntime()
    raise PermanentError(
        f"Unknown worker runtime {name!r}; this build supports: process, docker.", code="unknown_runtime"
    )


__all__ = ["ExecResult", "WorkerGone", "WorkerRuntime", "get_runtime"]
