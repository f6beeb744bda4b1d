"""Deploy targets on the local target: crash windows of a deploy (a release started but not
recorded, a replaced release left "stopping"), releases adopted when a node starts and surviving a
killed worker, and one deploy per project at a time. Real release processes, the real database."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from orchestrator import pipeline
from orchestrator.deploy import local, targets
from orchestrator.deploy.local import RELEASE_MARKER, http
from orchestrator.git import git
from orchestrator.maintenance import releases_reconcile
from orchestrator.procs import has_marker, pids_with_marker, process_alive
from orchestrator.stages import Next
from projects import deployments, runs
from projects.models import DeployLock, Deployment, Incident, PipelineRun, StageRun
from tests.conftest import wait_for_run
from tests.orchestrator.test_stages_idempotent import drive

STUBBORN_APP = """\
import json, os, signal
from http.server import BaseHTTPRequestHandler, HTTPServer

signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a release that ignores SIGTERM


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"release": os.environ["RELEASE"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Health).serve_forever()
"""


def _stubborn_release(tmp_path: Path, name: str) -> Path:
    release_dir = tmp_path / name
    release_dir.mkdir()
    (release_dir / "app.py").write_text(STUBBORN_APP)
    (release_dir / "factory.json").write_text(json.dumps({"start": ["python", "app.py"], "health": "/health"}))
    return release_dir


def _start_healthy(deployment: Deployment, release_dir: Path) -> int:
    pid = local.start(
        deployment_id=deployment.id, release_dir=release_dir, port=deployment.port, host="127.0.0.1", env={}
    )
    url = f"http://127.0.0.1:{deployment.port}/"
    assert local.wait_healthy(pid=pid, url=url, path="/health", release=str(deployment.id), timeout=20).ok
    return pid


def _port_free(port: int) -> bool:
    """Can a server listen there again (as servers do, past TIME_WAIT of old connections)?"""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not process_alive(pid)


def _another_run(project_id: int) -> PipelineRun:
    """A finished run of the project, to own one more release row."""
    return PipelineRun.objects.create(project_id=project_id, kind="redeploy", status="succeeded")


def _tested_commit(run: PipelineRun) -> tuple[str, str]:
    rows = {r.stage: r.output for r in StageRun.objects.filter(run=run, status="succeeded")}
    return rows["preparer"]["repo"], rows["tester"]["commit"]


# --- the local target -------------------------------------------------------------------------
def test_the_local_target_is_the_default_and_rows_remember_their_target(new_run, settings):
    run = new_run()
    drive(run.id)
    live = Deployment.objects.get(run=run, status="live")
    assert settings.DEPLOY_TARGET == "local" and live.target == "local"
    target = targets.target_for(live)
    assert target.name == "local" and target.alive(deployment_id=live.id, pid=live.pid)
    assert [(r.deployment_id, r.handle) for r in target.list_releases()] == [(live.id, str(live.pid))]
    usage = target.usage(deployment_id=live.id, pid=live.pid)
    assert usage.memory_bytes > 1_000_000 and 0 <= usage.cpu_percent < 200
    target.stop(deployment_id=live.id, pid=live.pid)
    assert not target.alive(deployment_id=live.id, pid=live.pid) and target.list_releases() == []
    assert target.usage(deployment_id=live.id, pid=live.pid) is None


def test_releases_carry_the_installation_marker_so_another_installation_never_lists_them(new_run, settings, tmp_path):
    run = new_run()
    drive(run.id)
    live = Deployment.objects.get(run=run, status="live")
    assert len(targets.get_target("local").list_releases()) == 1
    settings.FACTORY_HOME = tmp_path / "another-home"  # another installation on the same machine
    assert targets.get_target("local").list_releases() == []
    local.stop(deployment_id=live.id, pid=None)  # by marker: only its own installation's
    assert process_alive(live.pid)


# --- crash windows ------------------------------------------------------------------------------
def test_a_rerun_after_a_crash_before_the_pid_was_recorded_stops_the_orphan_and_goes_live_on_a_live_pid(
    new_run, tmp_path
):
    """The worker was killed between starting the release and recording its pid: the release runs
    on the row's port, untracked. The rerun must stop it (by its marker) before starting again, so
    the new release gets its port and the row goes live with the pid that serves."""
    run = new_run()
    drive(run.id, until="tester")
    repo, commit = _tested_commit(run)
    deployment = deployments.deployment_allocate(project_id=run.project_id, run_id=run.id, commit_sha=commit)
    crashed_dir = tmp_path / "crashed-attempt"
    git("clone", "--quiet", "--no-checkout", repo, str(crashed_dir))
    git("checkout", "--quiet", "--detach", commit, cwd=crashed_dir)
    orphan = _start_healthy(deployment, crashed_dir)  # never recorded: the attempt died here
    assert Deployment.objects.get(id=deployment.id).pid is None

    assert pipeline.execute(stage="deployer", run_id=run.id, task_id="rerun") is Next.CONTINUE

    live = Deployment.objects.get(id=deployment.id)
    assert live.status == "live" and live.pid != orphan
    assert _gone(orphan)
    assert pids_with_marker(RELEASE_MARKER, str(live.id)) == [live.pid]
    assert has_marker(live.pid, RELEASE_MARKER, str(live.id))
    assert http(live.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1


def test_a_release_left_stopping_is_finished_by_the_sweep_even_if_it_ignores_sigterm(new_run, tmp_path):
    """The worker was killed while stopping the release a redeploy replaced: the row stays
    "stopping", holding its port. The sweep stops it (SIGTERM, then SIGKILL) and marks it stopped."""
    run = new_run()
    old = deployments.deployment_allocate(project_id=run.project_id, run_id=run.id, commit_sha="0" * 40)
    release_dir = _stubborn_release(tmp_path, str(old.id))
    pid = _start_healthy(old, release_dir)
    deployments.deployment_started(deployment_id=old.id, pid=pid, release_dir=str(release_dir))
    Deployment.objects.filter(id=old.id).update(status="stopping")
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    assert process_alive(pid), "the release ignores SIGTERM"

    started = time.monotonic()
    report = releases_reconcile()

    assert report.stopped == [old.id] and report.orphans == []
    assert _gone(pid, timeout=1) and time.monotonic() - started < 15
    row = Deployment.objects.get(id=old.id)
    assert row.status == "stopped" and row.stopped_at is not None
    assert _port_free(row.port)
    assert releases_reconcile().total() == 0  # done once


def test_the_sweep_leaves_a_stopping_release_to_the_deployer_that_holds_the_projects_lock(new_run, tmp_path, settings):
    run = new_run()
    old = deployments.deployment_allocate(project_id=run.project_id, run_id=run.id, commit_sha="0" * 40)
    pid = _start_healthy(old, _stubborn_release(tmp_path, str(old.id)))
    deployments.deployment_started(deployment_id=old.id, pid=pid, release_dir="")
    Deployment.objects.filter(id=old.id).update(status="stopping")
    deployer = StageRun.objects.get(run=run, stage="deployer")
    StageRun.objects.filter(id=deployer.id).update(status="running", heartbeat_at=timezone.now())
    assert deployments.deploy_lock_acquire(project_id=run.project_id, stage_run_id=deployer.id) is None

    assert releases_reconcile().stopped == []  # a live Deployer is stopping it
    assert process_alive(pid)

    stale = timezone.now() - timedelta(seconds=settings.STAGE_STALE_SECONDS + 1)
    StageRun.objects.filter(id=deployer.id).update(heartbeat_at=stale)  # that Deployer died
    assert releases_reconcile().stopped == [old.id]
    assert _gone(pid, timeout=1)


# --- adoption ------------------------------------------------------------------------------------
def test_a_node_starting_keeps_live_releases_stops_unaccounted_ones_and_finds_dead_ones_down(new_run, tmp_path):
    run = new_run()
    drive(run.id)
    live = Deployment.objects.get(run=run, status="live")
    failed = deployments.deployment_allocate(
        project_id=run.project_id, run_id=_another_run(run.project_id).id, commit_sha="0" * 40
    )
    failed_pid = _start_healthy(failed, _stubborn_release(tmp_path, "failed"))
    deployments.deployment_fail(deployment_id=failed.id, error="failed its checks")
    unknown = Deployment(id=987654, port=failed.port + 1)  # no row at all (a database restored from a backup)
    unknown_pid = _start_healthy(unknown, _stubborn_release(tmp_path, "unknown"))

    other = new_run("a web service that greets people by name")
    drive(other.id)
    dead = Deployment.objects.get(run=other, status="live")
    os.killpg(dead.pid, signal.SIGKILL)
    assert _gone(dead.pid)

    report = releases_reconcile(adopt=True)

    assert sorted(report.orphans) == sorted([failed.id, unknown.id])
    assert _gone(failed_pid, timeout=1) and _gone(unknown_pid, timeout=1)
    assert report.down == [dead.id]
    incident = Incident.objects.get(project_id=other.project_id)
    assert incident.status == "detected" and incident.deployment_id == dead.id
    assert process_alive(live.pid) and Deployment.objects.get(id=live.id).status == "live"
    assert http(live.url + "health")[0] == 200


@pytest.mark.e2e
def test_releases_outlive_a_killed_worker_and_a_new_node_adopts_them(celery_procs, user, tmp_path):
    from projects import services

    worker = celery_procs.worker()
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    live = Deployment.objects.get(run=run, status="live")
    assert os.getsid(live.pid) == live.pid  # its own session: not the worker's
    celery_procs.kill(worker)  # SIGKILL to the worker's whole process group
    time.sleep(0.5)
    assert process_alive(live.pid) and http(live.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1

    # A release of this installation that no row accounts for (its row failed meanwhile).
    stray = deployments.deployment_allocate(
        project_id=project.id, run_id=_another_run(project.id).id, commit_sha="0" * 40
    )
    stray_pid = _start_healthy(stray, _stubborn_release(tmp_path, "stray"))
    deployments.deployment_fail(deployment_id=stray.id, error="left behind")

    celery_procs.worker()  # a node that starts adopts what it finds
    assert _gone(stray_pid, timeout=20), celery_procs.logs()
    assert process_alive(live.pid) and Deployment.objects.get(id=live.id).status == "live"
    assert http(live.url + "health")[0] == 200


# --- one deploy per project at a time -----------------------------------------------------------
def test_a_crashed_holders_deploy_lock_is_taken_over(new_run, settings):
    run = new_run()
    holder = StageRun.objects.get(run=run, stage="deployer")
    other = StageRun.objects.get(run=run, stage="tester")  # any other stage row stands for a second deployer
    StageRun.objects.filter(id=holder.id).update(status="running", heartbeat_at=timezone.now())
    assert deployments.deploy_lock_acquire(project_id=run.project_id, stage_run_id=holder.id) is None
    assert deployments.deploy_lock_acquire(project_id=run.project_id, stage_run_id=holder.id) is None  # re-entrant
    assert deployments.deploy_lock_acquire(project_id=run.project_id, stage_run_id=other.id) == run.id
    assert not deployments.deploy_lock_release(project_id=run.project_id, stage_run_id=other.id)  # not its lock

    stale = timezone.now() - timedelta(seconds=settings.STAGE_STALE_SECONDS + 1)
    StageRun.objects.filter(id=holder.id).update(heartbeat_at=stale)  # the holder's node died
    assert deployments.deploy_lock_acquire(project_id=run.project_id, stage_run_id=other.id) is None
    assert DeployLock.objects.get(project_id=run.project_id).stage_run_id == other.id

    StageRun.objects.filter(id=other.id).update(status="running", heartbeat_at=timezone.now())
    DeployLock.objects.filter(project_id=run.project_id).update(expires_at=timezone.now())  # past its time limit
    assert deployments.deploy_lock_acquire(project_id=run.project_id, stage_run_id=holder.id) is None
    assert deployments.deploy_lock_release(project_id=run.project_id, stage_run_id=holder.id)
    assert not DeployLock.objects.exists()


def test_a_second_run_deploying_the_same_project_waits_for_the_first(new_run, user):
    """Run A is deploying when its person cancels it and starts run B (a project has one active
    run, but a cancelled run's Deployer still finishes). B's Deployer waits for A's, then deploys."""
    first = new_run()
    drive(first.id, until="tester")
    outcome: dict[str, object] = {}

    def deploy_first() -> None:
        try:
            outcome["first"] = pipeline.execute(stage="deployer", run_id=first.id, task_id="first")
        finally:
            connection.close()

    thread = threading.Thread(target=deploy_first)
    thread.start()
    deadline = time.monotonic() + 20
    while not DeployLock.objects.filter(project_id=first.project_id).exists():
        assert time.monotonic() < deadline and thread.is_alive(), "the first Deployer never took the lock"
        time.sleep(0.01)
    runs.run_cancel(run_id=first.id, user=user)
    second = runs.run_create(project=first.project, kind=PipelineRun.Kind.REDEPLOY)
    for row in StageRun.objects.filter(run=first, status="succeeded"):
        StageRun.objects.filter(run=second, stage=row.stage).update(
            status="succeeded", output=row.output, finished_at=timezone.now()
        )
    PipelineRun.objects.filter(id=second.id).update(
        status="running", current_stage="deployer", started_at=timezone.now()
    )

    waited = pipeline.execute(stage="deployer", run_id=second.id, task_id="second")

    assert waited is Next.WAIT
    assert StageRun.objects.get(run=second, stage="deployer").status == "pending"  # the claim given back
    assert not Deployment.objects.filter(run=second).exists()  # nothing started
    thread.join(60)
    assert not thread.is_alive() and "first" in outcome
    assert not DeployLock.objects.exists()  # released when the first one finished

    assert pipeline.execute(stage="deployer", run_id=second.id, task_id="second-again") is Next.CONTINUE
    live = Deployment.objects.get(project_id=first.project_id, status="live")
    first_release = Deployment.objects.get(run=first)
    assert live.run_id == second.id and first_release.status == "stopped"
    assert not process_alive(first_release.pid) and not DeployLock.objects.exists()
    assert http(live.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1
