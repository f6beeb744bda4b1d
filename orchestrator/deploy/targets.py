"""Deploy targets: where a release runs. One protocol, two implementations chosen by name.

`local` (the embedded default): a release is a process group on this machine (`local.py`).
`docker`: a release is an image built from the project's own Dockerfile and run as a container
(`docker.py`). Either way the release listens on its allocated port on loopback and answers its
health endpoint there, so health and acceptance checks are plain HTTP whatever the target.

A Deployment row records the target that started it (`Deployment.target`), and every later step
(stop, probe, restart, rollback, teardown) goes through that target: `target_for(deployment)`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from django.conf import settings

from config.errors import PermanentError
from orchestrator.deploy import local
from orchestrator.procs import has_marker, process_alive

TARGETS = ("local", "docker")


@dataclass(frozen=True)
class RunningRelease:
    """A release found running on a target, by the factory's labels or markers."""

    deployment_id: int
    handle: str  # a process group id, or a container id
    running: bool = True


@dataclass(frozen=True)
class ReleaseUsage:
    cpu_percent: float | None
    memory_bytes: int | None


class DeployTarget(Protocol):
    name: str

    def start(
        self, *, deployment_id: int, project_slug: str, release_dir: Path, port: int, host: str, env: dict[str, str]
    ) -> int:
        """Start the release (its environment, secrets included, handed over in memory); return
        the pid to record. Raises `local.ReleaseError` when the release cannot start."""

    def stop(self, *, deployment_id: int, pid: int | None) -> None:
        """Stop everything of this deployment that runs (SIGTERM, then SIGKILL); none is no error."""

    def alive(self, *, deployment_id: int, pid: int | None) -> bool:
        """Does the release of this row run?"""

    def list_releases(self) -> list[RunningRelease]:
        """This installation's releases that run on the target."""

    def usage(self, *, deployment_id: int, pid: int | None) -> ReleaseUsage | None:
        """CPU (percent of one core) and memory in use; None when it does not run."""

    def log_tail(self, *, deployment_id: int, release_dir: Path, limit: int = 1500) -> str:
        """The end of the release's output."""

    def prune(self, *, project_slug: str, keep: set[int]) -> list[str]:
        """Remove what the target keeps of a project's releases (images) except ``keep``."""


class LocalTarget:
    """Releases as process groups on this machine (the functions of `local.py`)."""

    name = "local"

    def start(
        self, *, deployment_id: int, project_slug: str, release_dir: Path, port: int, host: str, env: dict[str, str]
    ) -> int:
        return local.start(deployment_id=deployment_id, release_dir=release_dir, port=port, host=host, env=env)

    def stop(self, *, deployment_id: int, pid: int | None) -> None:
        local.stop(deployment_id=deployment_id, pid=pid)

    def alive(self, *, deployment_id: int, pid: int | None) -> bool:
        return bool(pid) and has_marker(pid, local.RELEASE_MARKER, str(deployment_id))

    def list_releases(self) -> list[RunningRelease]:
        found: dict[int, RunningRelease] = {}
        for pid in local.release_pids():
            deployment_id = local.release_of(pid)
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if deployment_id is not None and (deployment_id not in found or group == pid):
                found[deployment_id] = RunningRelease(deployment_id=deployment_id, handle=str(group))
        return list(found.values())

    def usage(self, *, deployment_id: int, pid: int | None) -> ReleaseUsage | None:
        """From /proc: CPU over a short sample and resident memory, summed over the release's
        processes."""
        pids = local.release_pids(deployment_id)
        if not pids:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        before, started = _cpu_ticks(pids), time.monotonic()
        time.sleep(0.2)
        after, elapsed = _cpu_ticks(pids), time.monotonic() - started
        cpu = max(after - before, 0) / ticks / elapsed * 100
        return ReleaseUsage(cpu_percent=round(cpu, 1), memory_bytes=sum(_rss(p) for p in pids if process_alive(p)))

    def log_tail(self, *, deployment_id: int, release_dir: Path, limit: int = 1500) -> str:
        path = release_dir.parent / f"{release_dir.name}.log"
        try:
            return path.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return ""

    def prune(self, *, project_slug: str, keep: set[int]) -> list[str]:
        return []  # release directories are the kept releases; nothing else is built


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def get_target(name: str | None = None) -> DeployTarget:
    name = name or settings.DEPLOY_TARGET
    if name == "local":
        return LocalTarget()
    if name == "docker":
        from orchestrator.deploy.docker import DockerTarget

        return DockerTarget()
    raise PermanentError(
        f"Unknown deploy target {name!r}; this build supports: {', '.join(TARGETS)}.", code="unknown_deploy_target"
    )


def target_for(deployment) -> DeployTarget:
    """The target that started this release (rows made before targets existed say `local`)."""
    return get_target(deployment.target or "local")
