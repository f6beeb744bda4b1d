"""Is a project's live release healthy right now? One quick probe, for people asking (/status).

The Deployer's own checks (with backoff, before going live) are in ``deploy/local.py``; this is a
single look with a short timeout, never a wait.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.deploy.local import ReleaseError, http, read_start_spec
from orchestrator.procs import process_alive
from projects import selectors

PROBE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


def release_health(*, project_id: int) -> Health | None:
    """The live release's health; None when the project has no live release."""
    live = selectors.live_deployment(project_id=project_id)
    if live is None:
        return None
    if live.pid and not process_alive(live.pid):
        return Health(False, "its process is not running")
    path = _health_path(live.release_dir)
    status, _ = http(live.url.rstrip("/") + path, timeout=PROBE_TIMEOUT_SECONDS)
    if status == 200:
        return Health(True, "healthy")
    return Health(False, f"{path} answered {status}" if status else f"{path} did not answer")


def _health_path(release_dir: str) -> str:
    """The path the release's factory.json names for its health check; /health without one."""
    if not release_dir:
        return "/health"
    try:
        return read_start_spec(Path(release_dir)).health
    except ReleaseError:
        return "/health"
