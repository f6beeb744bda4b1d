"""End to end through a real Celery worker (Redis when REDIS_URL is set, else the filesystem
broker): description in, a deployed service answering HTTP out."""

from __future__ import annotations

import time

import pytest

from agents import services as agent_services
from agents.models import WorkerSession
from orchestrator.deploy.local import RELEASE_MARKER, http
from orchestrator.git import bare_repo_path, git
from orchestrator.procs import pids_with_marker, process_alive
from orchestrator.runtime.base import SESSION_MARKER
from projects import services
from projects.models import Deployment, StageRun
from tests.conftest import wait_for_run

pytestmark = pytest.mark.e2e


def test_a_description_becomes_a_running_service(celery_procs, user):
    celery_procs.worker()
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    live = Deployment.objects.get(project=project, status="live")
    assert run.result_message == f"Greeter is live.\nService running at {live.url}"
    assert http(live.url + "health")[0] == 200
    status, body = http(live.url + "greet?name=Grace")
    assert (status, '"Hello, Grace!"' in body) == (200, True)
    stages = list(StageRun.objects.filter(run=run).values_list("stage", "status"))
    assert stages == [(s, "succeeded") for s in ["architect", "preparer", "developer", "tester", "deployer", "notify"]]
    # The worker is paused while nobody works in it...
    session = WorkerSession.objects.get(project=project, role="developer")
    assert session.state == "paused"
    # ...and a Celery node that shuts down ends the workers it owns.
    celery_procs.stop_all()
    session.refresh_from_db()
    assert (session.state, session.state_reason) == ("terminated", f"node {session.owner_node} shut down")
    assert pids_with_marker(SESSION_MARKER, str(session.id)) == []


def test_agent_failing_twice_succeeds_on_iteration_three(celery_procs, user):
    agent_services.agent_config_set(role="developer", options={"fail_times": 2})
    celery_procs.worker()
    project, run = services.project_create(owner=user, description="a web service that echoes text")
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    assert run.iteration == 3
    testers = list(
        StageRun.objects.filter(run=run, stage="tester").order_by("iteration").values_list("status", flat=True)
    )
    assert testers == ["failed", "failed", "succeeded"]
    failed_report = StageRun.objects.get(run=run, stage="tester", iteration=1).output["report"]
    assert failed_report["failed"] >= 1 and failed_report["failing"]
    live = Deployment.objects.get(project=project, status="live")
    assert '"text": "hi"' in http(live.url + "echo?text=hi")[1]


def test_agent_failing_four_times_with_cap_three_asks_a_person_then_fails_with_the_report(celery_procs, user):
    from agents.models import Escalation
    from orchestrator.maintenance import escalations_expire

    agent_services.agent_config_set(role="developer", options={"fail_times": 4})
    celery_procs.worker()
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    deadline = time.monotonic() + 120
    while not Escalation.objects.filter(run=run).exists():
        assert time.monotonic() < deadline, celery_procs.logs()
        time.sleep(0.25)
    run.refresh_from_db()
    assert (run.status, run.max_iterations) == ("waiting_human", 3)
    escalation = Escalation.objects.get(run=run)
    assert escalation.reason == "tests_failing" and "test_greet" in escalation.question
    # Nobody answers: the run fails with the report as its reason, and the person is told.
    Escalation.objects.filter(id=escalation.id).update(deadline=escalation.created_at)
    assert escalations_expire() == 1
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "failed" and run.error_code == "escalation_expired"
    assert "test_greet" in run.error_message  # the failing test's name is in the reason
    assert "failed at the" in run.result_message
    assert not Deployment.objects.filter(project=project).exists()


def _agent_pids() -> list[int]:
    from pathlib import Path

    found = []
    for pid in pids_with_marker(SESSION_MARKER):
        try:
            if b"agents.scripted.agent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except FileNotFoundError:
            continue
    return found


def test_worker_killed_mid_developer_the_run_still_finishes_once(celery_procs, user):
    agent_services.agent_config_set(role="developer", options={"work_seconds": 6})
    first = celery_procs.worker()
    celery_procs.beat()
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    deadline = time.monotonic() + 90
    while not _agent_pids():  # the agent is at work inside the worker
        assert time.monotonic() < deadline, celery_procs.logs()
        time.sleep(0.1)
    old_session = WorkerSession.objects.get(project=project, role="developer")
    celery_procs.kill(first)  # SIGKILL: the Celery worker and its pool die mid-task
    assert StageRun.objects.get(run=run, stage="developer").status == "running"

    celery_procs.worker()
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    developer = StageRun.objects.get(run=run, stage="developer")
    assert developer.attempt == 2  # re-enqueued once by the reconciler, from the database
    assert run.events.filter(type="stage.requeued", stage="developer").exists()
    # No duplicate side effects: one implementation commit on top of the scaffold, one release.
    slug = project.__class__.objects.get(id=project.id).slug
    assert int(git("rev-list", "--count", run.branch, cwd=bare_repo_path(slug)).stdout) == 2
    assert Deployment.objects.filter(project=project).count() == 1
    # No orphaned process: the old worker was replaced and everything in it is gone.
    old_session.refresh_from_db()
    assert old_session.state == "failed"
    assert pids_with_marker(SESSION_MARKER, str(old_session.id)) == []
    assert not process_alive(int(old_session.container_id))
    live_sessions = WorkerSession.objects.filter(project=project, role="developer", state__in=WorkerSession.LIVE)
    assert [s.id for s in live_sessions] != [old_session.id] and live_sessions.count() == 1
    deployment = Deployment.objects.get(project=project)
    assert pids_with_marker(RELEASE_MARKER, str(deployment.id)) == [deployment.pid]


def test_over_the_worker_quota_a_stage_waits_by_retrying_then_goes_on(celery_procs, user):
    from orchestrator import workers as worker_ops
    from orchestrator.maintenance import project_teardown

    celery_procs.worker(MAX_WORKERS="1", WORKER_QUOTA_RETRY_SECONDS="1")
    # Another project (whose own run ended at once) holds the only worker slot.
    blocker, blocker_run = services.project_create(owner=user, description="a bot that tells the weather")
    assert wait_for_run(blocker_run.id, procs=celery_procs).status == "failed"
    held = worker_ops.session_acquire(project_id=blocker.id, run_id=blocker_run.id, role="developer")
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    deadline = time.monotonic() + 60
    while run.events.filter(type="stage.waiting").count() < 2:  # waited, and came back to wait again
        assert time.monotonic() < deadline, celery_procs.logs()
        time.sleep(0.2)
    developer = StageRun.objects.get(run=run, stage="developer")
    assert developer.status == "pending"
    assert not WorkerSession.objects.filter(project=project).exists()
    project_teardown(project_id=blocker.id)  # the slot frees up
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    assert WorkerSession.objects.get(id=held.id).state == "terminated"
