"""A whole run with the Developer and Tester stages in Docker containers, on the real engine."""
from __future__ import annotations

import pytest

from agents import services as agent_services
from agents.models import WorkerSession
from orchestrator.deploy.local import http
from projects import services
from projects.models import Deployment
from tests.conftest import wait_for_run

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def test_developer_and_tester_work_in_a_container(celery_procs, user, engine, worker_image):
    agent_services.agent_config_set(role="developer", runtime="docker", cpu_limit=1.0, memory_limit_mb=512)
    celery_procs.worker(WORKER_IMAGE=worker_image)
    project, run = services.project_create(owner=user, description="a web service that rolls dice")
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    session = WorkerSession.objects.get(project=project)
    assert session.runtime == "docker"
    container = engine.containers.get(session.container_id)
    assert container.status == "paused"  # the agent stopped: the worker costs no CPU
    assert container.labels["factory.session"] == str(session.id)
    assert container.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    live = Deployment.objects.get(project=project, status="live")
    assert '"roll"' in http(live.url + "roll?sides=6")[1]
