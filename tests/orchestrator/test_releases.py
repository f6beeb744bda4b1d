"""Live releases watched and repaired: a killed release is found and restarted; one that keeps
failing is rolled back to the previous release on the same port; a person can roll back by hand.
Real releases (processes on loopback), the real database, the stages driven in this process."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from agents import services as agent_services
from agents.models import Escalation
from config.errors import Conflict, ValidationFailed
from orchestrator import releases
from orchestrator.deploy import local
from orchestrator.deploy.local import http
from orchestrator.procs import process_alive
from projects import deployments
from projects.models import Deployment, Incident, PipelineRun
from tests.orchestrator.test_stages_idempotent import drive


def _kill(deployment: Deployment) -> None:
    os.killpg(deployment.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_alive(deployment.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _live(project_id: int) -> Deployment:
    return Deployment.objects.select_related("project").get(project_id=project_id, status="live")


def _repair_until_done(incident_id: int) -> None:
    for _ in range(10):
        if releases.release_repair(incident_id=incident_id) is None:
            return
    raise AssertionError("the repair did not end")


def _second_release(first: Deployment) -> Deployment:
    """A newer release of the same project (a copy of the first, as a redeploy would make),
    live in its place; the first is stopped and kept, as the Deployer leaves it."""
    run = PipelineRun.objects.create(project=first.project, kind="redeploy", status="succeeded")
    second = deployments.deployment_allocate(project_id=first.project_id, run_id=run.id, commit_sha=first.commit_sha)
    release_dir = Path(first.release_dir).parent / str(second.id)
    shutil.copytree(first.release_dir, release_dir)
    pid = local.start(deployment_id=second.id, release_dir=release_dir, port=second.port, host="127.0.0.1", env={})
    deployments.deployment_started(deployment_id=second.id, pid=pid, release_dir=str(release_dir))
    url = f"http://127.0.0.1:{second.port}/"
    assert local.wait_healthy(pid=pid, url=url, path="/health", release=str(second.id), timeout=20).ok
    for old in deployments.deployment_go_live(deployment_id=second.id, url=url):
        local.stop(deployment_id=old.id, pid=old.pid)
        deployments.deployment_stopped(deployment_id=old.id)
    return _live(first.project_id)


def _break(deployment: Deployment) -> None:
    """The release's code now dies at start (a bad disk, a missing file...)."""
    (Path(deployment.release_dir) / "app.py").write_text("raise SystemExit('broken on purpose')\n")


def test_a_healthy_release_passes_its_probe_and_records_it(new_run):
    run = new_run()
    drive(run.id)
    counts = releases.releases_probe()
    live = _live(run.project_id)
    assert counts == {"probed": 1, "down": 0, "opened": 0, "given_up": 0, "deploying": 0}
    assert (live.probe_ok, live.probe_detail) == (True, "healthy") and live.probe_ms is not None


def test_a_killed_release_is_found_down_and_restarted_in_place(new_run):
    run = new_run()
    drive(run.id)
    live = _live(run.project_id)
    _kill(live)

    assert releases.releases_probe()["opened"] == 1
    incident = Incident.objects.get(project_id=run.project_id)
    assert incident.status == "detected" and "gone" in incident.reason
    assert releases.releases_probe()["opened"] == 0  # one incident per outage, however many probes

    _repair_until_done(incident.id)
    incident.refresh_from_db()
    restarted = _live(run.project_id)
    assert (incident.status, incident.serving_id, incident.restarts) == ("resolved", live.id, 1)
    assert restarted.id == live.id and restarted.pid != live.pid and restarted.restarts == 1
    assert http(live.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1  # same URL, serving again
    assert list(incident.events.values_list("type", flat=True)) == ["detected", "restarting", "restarted"]


def test_a_release_that_keeps_failing_is_rolled_back_to_the_previous_one_on_the_same_port(new_run, settings):
    settings.RELEASE_RESTART_LIMIT = 1
    run = new_run()
    drive(run.id)
    first = _live(run.project_id)
    second = _second_release(first)
    _break(second)
    _kill(second)

    releases.releases_probe()
    incident = Incident.objects.get(project_id=run.project_id)
    _repair_until_done(incident.id)

    incident.refresh_from_db()
    steps = list(incident.events.values_list("type", "detail"))
    assert (incident.status, incident.serving_id) == ("resolved", first.id), steps
    serving = _live(run.project_id)
    assert serving.id == first.id and serving.port == second.port and serving.url == second.url
    status, body = http(second.url + "health")
    assert status == 200 and f'"release": "{first.id}"' in body
    assert Deployment.objects.get(id=second.id).status == "failed"
    assert list(incident.events.values_list("type", flat=True)) == [
        "detected",
        "restarting",
        "restart_failed",
        "rolling_back",
        "rolled_back",
    ]


def test_with_nothing_to_roll_back_to_the_factory_gives_up_and_says_so(new_run, settings):
    settings.RELEASE_RESTART_LIMIT = 1
    run = new_run()
    drive(run.id)
    live = _live(run.project_id)
    app_source = (Path(live.release_dir) / "app.py").read_text()
    _break(live)
    _kill(live)

    releases.releases_probe()
    incident = Incident.objects.get(project_id=run.project_id)
    _repair_until_done(incident.id)

    incident.refresh_from_db()
    assert incident.status == "failed" and incident.ended_at is not None
    assert incident.events.last().type == "gave_up"
    # The owner is asked, once: retry or leave it down.
    escalation = Escalation.objects.get(run=run, status="open")
    assert escalation.reason == "release_down" and escalation.context["incident_id"] == incident.id
    assert "retry" in escalation.question
    # Still down, and still known to be: no new outage (and question) every sweep.
    for _ in range(2):
        assert releases.releases_probe() == {"probed": 1, "down": 1, "opened": 0, "given_up": 1, "deploying": 0}
    assert Incident.objects.filter(project_id=run.project_id).count() == 1

    # The person fixes what broke it and answers "retry": the repair starts over and brings it back.
    with pytest.raises(ValidationFailed, match="retry"):
        agent_services.escalation_answer(
            escalation_id=escalation.id, user=run.project.owner, action="guidance", answer="hm"
        )
    (Path(live.release_dir) / "app.py").write_text(app_source)
    agent_services.escalation_answer(
        escalation_id=escalation.id, user=run.project.owner, action="guidance", answer="Retry"
    )
    incident.refresh_from_db()
    assert (incident.status, incident.restarts) == ("recovering", 0)
    _repair_until_done(incident.id)
    incident.refresh_from_db()
    assert incident.status == "resolved", list(incident.events.values_list("type", "detail"))
    assert [e.type for e in incident.events.all()][-3:] == ["retry_asked", "restarting", "restarted"]
    assert releases.releases_probe()["down"] == 0


def test_stopping_a_project_closes_its_open_incident(new_run, settings):
    settings.RELEASE_RESTART_LIMIT = 1
    run = new_run()
    drive(run.id)
    live = _live(run.project_id)
    _kill(live)
    releases.releases_probe()
    incident = Incident.objects.get(project_id=run.project_id)
    assert incident.status in Incident.OPEN
    releases.project_stop(project=live.project)
    incident.refresh_from_db()
    assert incident.status == "resolved" and incident.events.last().type == "closed"
    # The repair that was on its way finds nothing to do, and tells nobody it gave up.
    assert releases.release_repair(incident_id=incident.id) is None
    assert not Escalation.objects.filter(run=run).exists()


def test_rollback_by_hand_serves_the_earlier_release_and_keeps_the_url(new_run):
    run = new_run()
    drive(run.id)
    first = _live(run.project_id)
    second = _second_release(first)

    restored = releases.rollback_by_hand(project=first.project)

    assert restored.id == first.id and restored.status == "live" and restored.url == second.url
    assert f'"release": "{first.id}"' in http(second.url + "health")[1]
    assert Deployment.objects.get(id=second.id).status == "stopped"
    with pytest.raises(Conflict):  # nothing older than the first release is kept
        releases.rollback_by_hand(project=first.project)


def test_a_release_down_during_a_deploy_of_its_project_is_left_to_the_deployer(new_run, settings):
    """A bot's hand-over stops the old release before the new one polls; a worker killed there
    leaves the old row live with nothing running. While a Deployer holds the project's deploy
    lock the probe does not restart the old release against it; once that Deployer is gone
    (its heartbeat stale) the outage is the probe's again."""
    from datetime import timedelta

    from django.utils import timezone

    from projects.models import StageRun

    run = new_run()
    drive(run.id)
    live = _live(run.project_id)
    change = PipelineRun.objects.create(project=live.project, kind="redeploy", status="running")
    deployer = StageRun.objects.create(
        run=change, stage="deployer", iteration=1, status="running", heartbeat_at=timezone.now()
    )
    assert deployments.deploy_lock_acquire(project_id=run.project_id, stage_run_id=deployer.id) is None
    _kill(live)

    counts = releases.releases_probe()
    assert (counts["down"], counts["deploying"], counts["opened"]) == (1, 1, 0)
    assert not Incident.objects.filter(project_id=run.project_id).exists()

    stale = timezone.now() - timedelta(seconds=settings.STAGE_STALE_SECONDS + 1)
    StageRun.objects.filter(id=deployer.id).update(heartbeat_at=stale)
    assert releases.releases_probe()["opened"] == 1
