"""Clean-up the engine does on request or on schedule."""
from __future__ import annotations

import structlog

from orchestrator import workers
from orchestrator.deploy import local
from projects import services as project_services
from projects.models import Deployment

log = structlog.get_logger(__name__)


def project_teardown(*, project_id: int) -> int:
    """Stop every release of a project that holds a port, and terminate its workers."""
    stopped = 0
    for deployment in Deployment.objects.filter(project_id=project_id, status__in=Deployment.HOLDS_PORT):
        local.stop(deployment_id=deployment.id, pid=deployment.pid)
        project_services.deployment_stopped(deployment_id=deployment.id)
        stopped += 1
    workers.sessions_terminate_for_project(project_id=project_id, reason="project torn down")
    log.info("project_torn_down", project_id=project_id, releases=stopped)
    return stopped
