"""The worker lifecycle on the process runtime: sweeps act on real process groups."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from agents import services as agent_services
from agents.models import WorkerSession, WorkerTransition
from agents.services import WorkerQuotaExceeded
from orchestrator import maintenance, workers
from orchestrator.procs import pids_with_marker, process_state
from orchestrator.runtime.base import SESSION_MARKER, WorkerSpec
from orchestrator.runtime.process import ProcessRuntime
from projects import services


@pytest.fixture
def project(transactional_db, user):
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    yield project, run
    maintenance.project_teardown(project_id=project.id)


def _acquire(project, run, role="developer"):
    return workers.session_acquire(project_id=project.id, run_id=run.id, role=role)


def _age(session, **fields):
    WorkerSession.objects.filter(id=session.id).update(**fields)


def test_an_idle_running_worker_is_paused_by_the_sweep(project):
    session = _acquire(*project)
    agent_services.agent_config_set(role="developer", idle_ttl_seconds=60)
    assert maintenance.workers_pause_idle() == 0  # active just now
    _age(session, last_activity_at=timezone.now() - timedelta(seconds=61))
    assert maintenance.workers_pause_idle() == 1
    session.refresh_from_db()
    assert session.state == "paused"
    assert process_state(int(session.container_id)) == "T"
    assert list(WorkerTransition.objects.filter(session=session).values_list("from_state", "to_state")) == [
        ("", "starting"),
        ("starting", "running"),
        ("running", "idle"),
        ("idle", "paused"),
    ]


def test_a_worker_paused_past_pause_ttl_is_terminated(project):
    session = _acquire(*project)
    workers.session_idle(session=session, reason="done")
    agent_services.agent_config_set(role="developer", pause_ttl_seconds=1800)
    assert maintenance.workers_reap().expired == []
    _age(session, state_changed_at=timezone.now() - timedelta(minutes=31))
    assert maintenance.workers_reap().expired == [session.id]
    session.refresh_from_db()
    assert (session.state, session.state_reason) == ("terminated", "paused past pause_ttl")
    assert pids_with_marker(SESSION_MARKER, str(session.id)) == []


def test_a_worker_past_its_max_lifetime_is_terminated_even_while_running(project):
    session = _acquire(*project)
    _age(session, created_at=timezone.now() - timedelta(hours=7))
    assert maintenance.workers_reap().expired == [session.id]
    assert WorkerSession.objects.get(id=session.id).state_reason == "past max lifetime"


def test_a_session_whose_worker_was_killed_is_marked_failed(project):
    session = _acquire(*project)
    os.killpg(int(session.container_id), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_state(int(session.container_id)) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.waitpid(int(session.container_id), os.WNOHANG)
    report = maintenance.workers_reap()
    assert report.vanished == [session.id]
    assert WorkerSession.objects.get(id=session.id).state == "failed"


def test_an_orphan_worker_started_by_hand_is_removed_by_one_sweep(project, tmp_path):
    runtime = ProcessRuntime()
    handle = runtime.create(WorkerSpec(session_id=987654, workspace=tmp_path, env={"PATH": os.environ["PATH"]}))
    live = _acquire(*project)
    report = maintenance.workers_reap()
    assert handle in report.orphans
    assert str(live.container_id) not in report.orphans
    assert pids_with_marker(SESSION_MARKER, "987654") == []
    assert WorkerSession.objects.get(id=live.id).state == "running"


def test_the_quota_counts_paused_workers_and_refuses_the_next(project, user, settings):
    settings.MAX_WORKERS = 1
    session = _acquire(*project)
    workers.session_idle(session=session, reason="done")
    other, other_run = services.project_create(owner=user, description="a web service that echoes text")
    with pytest.raises(WorkerQuotaExceeded):
        _acquire(other, other_run)
    assert WorkerSession.objects.count() == 1
    maintenance.project_teardown(project_id=other.id)


def test_a_paused_worker_is_resumed_for_the_same_project(project):
    first = _acquire(*project)
    workers.session_idle(session=first, reason="done")
    again = _acquire(*project)
    assert again.id == first.id and again.state == "running"
    assert process_state(int(again.container_id)) in ("S", "R")


def test_a_node_that_shuts_down_terminates_the_workers_it_owns(project):
    session = _acquire(*project)
    assert maintenance.workers_terminate_node(node=session.owner_node) == 1
    assert WorkerSession.objects.get(id=session.id).state == "terminated"
    assert pids_with_marker(SESSION_MARKER, str(session.id)) == []


@pytest.mark.parametrize("context,age_hours,resumed", [(10_000, 1, True), (150_000, 1, False), (10_000, 25, False)])
def test_the_agent_session_is_resumed_only_while_small_and_recent(project, context, age_hours, resumed):
    session = _acquire(*project)
    agent_services.session_record_agent(session_id=session.id, agent_session_id="sess-1", context_tokens=context)
    _age(session, last_activity_at=timezone.now() - timedelta(hours=age_hours))
    session.refresh_from_db()
    assert agent_services.session_resumable_agent(session) == ("sess-1" if resumed else None)


def test_another_projects_worker_is_never_reused(project, user):
    first = _acquire(*project)
    other, other_run = services.project_create(owner=user, description="a web service that echoes text")
    second = _acquire(other, other_run)
    assert second.id != first.id and second.container_id != first.container_id
    maintenance.project_teardown(project_id=other.id)


def test_an_operator_can_pause_resume_and_terminate_a_worker(project):
    session = _acquire(*project)
    workers.operator_action(session_id=session.id, action="pause")
    assert process_state(int(session.container_id)) == "T"
    workers.operator_action(session_id=session.id, action="resume")
    assert WorkerSession.objects.get(id=session.id).state == "running"
    assert process_state(int(session.container_id)) in ("S", "R")
    workers.operator_action(session_id=session.id, action="terminate")
    assert WorkerSession.objects.get(id=session.id).state_reason == "terminated by an operator"
    assert pids_with_marker(SESSION_MARKER, str(session.id)) == []
