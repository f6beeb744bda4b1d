"""Is a project's live release healthy right now? One quick probe, for people asking (/status).

The Deployer's own checks (with backoff, before going live) are in the engine; this is a single
look at the live release's health URL with a short timeout, never a wait.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from django.conf import settings

from projects import selectors
from projects.specs import StartSpecError, read_start_spec

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
    path = _health_path(live.release_dir)
    # The release's own port, not the URL people get (a name behind Caddy, or a bot's t.me link).
    internal = f"http://{settings.DEPLOY_HOST}:{live.port}"
    try:
        with urllib.request.urlopen(internal + path, timeout=PROBE_TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError):
        return Health(False, f"{path} did not answer")
    return Health(True, "healthy") if status == 200 else Health(False, f"{path} answered {status}")


def _health_path(release_dir: str) -> str:
    """The path the release's factory.json names for its health check; /health without one."""
    try:
        return read_start_spec(release_dir).health
    except StartSpecError:
        return "/health"
