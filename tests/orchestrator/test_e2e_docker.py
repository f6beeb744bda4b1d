"""A whole run with the Developer and Tester stages in Docker containers, on the real engine."""

from __future__ import annotations

import pytest

import docker
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
    session = WorkerSession.objects.get(project=project, role="developer")
    assert session.runtime == "docker"
    container = engine.containers.get(session.container_id)
    assert container.status == "paused"  # the agent stopped: the worker costs no CPU
    assert container.labels["factory.session"] == str(session.id)
    assert container.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    live = Deployment.objects.get(project=project, status="live")
    assert '"roll"' in http(live.url + "roll?sides=6")[1]


@pytest.fixture
def docker_project(new_run, engine, worker_image, settings):
    settings.WORKER_IMAGE = worker_image
    agent_services.agent_config_set(role="developer", runtime="docker")
    run = new_run("a web service that rolls dice")
    return run


def _docker_session(run):
    from orchestrator import workers

    config = agent_services.agent_config_for(role="developer")
    return workers.session_acquire(project_id=run.project_id, run_id=run.id, role="developer", config=config)


def test_the_sweeps_act_on_real_containers(docker_project, engine):
    from datetime import timedelta

    from django.utils import timezone

    from orchestrator import maintenance
    from orchestrator.runtime.base import INSTANCE_MARKER, SESSION_MARKER, factory_instance

    session = _docker_session(docker_project)
    # Idle past its TTL: paused, really (the engine says so).
    WorkerSession.objects.filter(id=session.id).update(last_activity_at=timezone.now() - timedelta(hours=1))
    assert maintenance.workers_pause_idle() == 1
    assert engine.containers.get(session.container_id).status == "paused"
    # An orphan started by hand with our labels: removed by one sweep; the live one is left alone.
    orphan = engine.containers.run(
        worker_image_name(engine, session),
        ["sleep", "infinity"],
        detach=True,
        network_mode="none",
        labels={"factory.managed": "true", INSTANCE_MARKER: factory_instance(), SESSION_MARKER: "987654"},
    )
    report = maintenance.workers_reap()
    assert orphan.id in report.orphans and session.container_id not in report.orphans
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(orphan.id)
    # A container killed behind our back: its session is marked failed.
    container = engine.containers.get(session.container_id)
    container.unpause()
    container.kill()
    assert maintenance.workers_reap().vanished == [session.id]
    assert WorkerSession.objects.get(id=session.id).state == "failed"


def test_paused_past_pause_ttl_a_container_is_removed(docker_project, engine):
    from datetime import timedelta

    from django.utils import timezone

    from orchestrator import maintenance, workers

    session = _docker_session(docker_project)
    workers.session_idle(session=session, reason="done")
    WorkerSession.objects.filter(id=session.id).update(state_changed_at=timezone.now() - timedelta(hours=1))
    assert maintenance.workers_reap().expired == [session.id]
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(session.container_id)


def worker_image_name(engine, session) -> str:
    return engine.containers.get(session.container_id).image.id
