"""A live project changed on request (US3), redeployed, stopped, started, rolled back and deleted.

The stages run in this process (``drive``), against the real database, real git, the scripted
agents in real worker process groups and real released services on loopback; the API is called
as a person would.
"""

from __future__ import annotations

import pytest

from agents import services as agent_services
from agents.models import Usage, WorkerSession
from orchestrator import releases
from orchestrator.deploy.local import RELEASE_MARKER, http
from orchestrator.git import bare_repo_path, git
from orchestrator.procs import pids_with_marker
from projects.models import Deployment, PipelineRun, Project, StageRun
from tests.conftest import client_for
from tests.orchestrator.test_stages_idempotent import drive

pytestmark = pytest.mark.django_db(transaction=True)


def _live(project_id: int) -> Deployment:
    return Deployment.objects.get(project_id=project_id, status="live")


def _greeter(new_run) -> tuple[PipelineRun, Deployment]:
    run = new_run()
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    return run, _live(run.project_id)


def _change(api, project_id: int, description: str) -> PipelineRun:
    response = api.post(f"/api/projects/{project_id}/changes/", {"description": description}, format="json")
    assert response.status_code == 201, response.content
    return PipelineRun.objects.get(id=response.json()["run_id"])


def test_also_roll_dice_makes_the_live_release_answer_greet_and_roll(new_run, user):
    first, old = _greeter(new_run)
    api = client_for(user)

    change = _change(api, first.project_id, "also roll dice")
    assert (change.kind, change.request) == ("change", "also roll dice")
    drive(change.id)
    change.refresh_from_db()

    assert change.status == "succeeded", change.error_message
    project = Project.objects.get(id=first.project_id)
    assert (project.name, project.slug, [f["name"] for f in project.spec["features"]]) == (
        "Greeter",
        project.spec["slug"],
        ["greet", "dice"],
    )
    # Built on the live release's commit: the change's branch descends from it.
    prepared = StageRun.objects.get(run=change, stage="preparer").output
    assert prepared["base"] == old.commit_sha
    repo = bare_repo_path(project.slug)
    git("merge-base", "--is-ancestor", old.commit_sha, change.branch, cwd=repo)
    # The Tester ran the old checks and the new ones (the project's own tests hold both).
    tests = git("show", f"{change.branch}:tests/test_features.py", cwd=repo).stdout
    assert "/greet" in tests and "/roll" in tests
    new = _live(project.id)
    assert new.id != old.id and new.run_id == change.id
    assert Deployment.objects.get(id=old.id).status == "stopped"
    assert http(new.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1
    status, body = http(new.url + "roll?sides=6")
    assert status == 200 and '"roll"' in body
    # The new main line is the deployed commit: the next change builds on it.
    assert git("rev-parse", "main", cwd=repo).stdout.strip() == new.commit_sha


def test_a_change_whose_release_fails_its_checks_leaves_the_live_release_serving(new_run, user, settings):
    first, old = _greeter(new_run)
    settings.DEPLOY_HEALTH_TIMEOUT = 3  # the broken release never answers its health check
    agent_services.agent_config_set(role="developer", options={"broken_release_times": 5})
    change = _change(client_for(user), first.project_id, "also roll dice")
    PipelineRun.objects.filter(id=change.id).update(max_iterations=1)

    drive(change.id)
    change.refresh_from_db()

    assert change.status == "waiting_human"  # at the cap: a person decides
    assert Deployment.objects.filter(run=change).values_list("status", flat=True).get() == "failed"
    assert _live(first.project_id).id == old.id
    assert http(old.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1
    assert pids_with_marker(RELEASE_MARKER, str(old.id)) == [old.pid]


def test_a_change_the_architect_does_not_understand_fails_and_changes_nothing(new_run, user):
    first, old = _greeter(new_run)
    spec = Project.objects.get(id=first.project_id).spec

    change = _change(client_for(user), first.project_id, "also fly to the moon")
    drive(change.id)
    change.refresh_from_db()

    assert change.status == "failed"
    assert change.error_code == "change_not_understood"
    assert '"fly"' in change.error_message
    assert Project.objects.get(id=first.project_id).spec == spec
    assert _live(first.project_id).id == old.id


def test_redeploy_starts_the_same_commit_as_a_new_release(new_run, user):
    first, old = _greeter(new_run)
    response = client_for(user).post(f"/api/projects/{first.project_id}/redeploy/")
    assert response.status_code == 201, response.content
    run = PipelineRun.objects.get(id=response.json()["run_id"])
    assert run.kind == "redeploy"

    drive(run.id)
    run.refresh_from_db()

    assert run.status == "succeeded", run.error_message
    assert StageRun.objects.get(run=run, stage="architect").output["reused"] is True
    # No agent turn: the Developer hands on the deployed commit, and nothing is spent.
    developed = StageRun.objects.get(run=run, stage="developer").output
    assert developed["commit"] == old.commit_sha and "session_id" not in developed
    assert not WorkerSession.objects.filter(run_id=run.id, role="developer").exists()
    assert not Usage.objects.filter(stage_run__run=run, role="developer").exists()
    new = _live(first.project_id)
    assert new.id != old.id and new.commit_sha == old.commit_sha
    assert Deployment.objects.get(id=old.id).status == "stopped"
    assert http(new.url + "greet?name=Ada")[0] == 200


def test_stop_then_start_serves_the_last_release_again(new_run, user):
    first, old = _greeter(new_run)
    api = client_for(user)

    stopped = api.post(f"/api/projects/{first.project_id}/stop/")
    assert stopped.status_code == 200 and stopped.json() == {"stopped": [old.id]}
    assert not pids_with_marker(RELEASE_MARKER, str(old.id))
    assert not Deployment.objects.filter(project_id=first.project_id, status="live").exists()
    assert api.get(f"/api/projects/{first.project_id}/").json()["health"]["live_release"] is None
    assert api.post(f"/api/projects/{first.project_id}/stop/").json() == {"stopped": []}

    started = api.post(f"/api/projects/{first.project_id}/start/")
    assert started.status_code == 200, started.content
    assert started.json()["id"] == old.id and started.json()["status"] == "live"
    url = _live(first.project_id).url
    assert http(url + "greet?name=Ada")[1].count("Hello, Ada!") == 1
    # The probe finds it healthy and records what it uses; the detail shows it (US4).
    releases.releases_probe()
    release = api.get(f"/api/projects/{first.project_id}/").json()["health"]["live_release"]
    assert release["id"] == old.id and release["probe"]["ok"] is True and release["probe"]["ms"] >= 0
    assert release["memory_bytes"] > 0 and release["cpu_percent"] >= 0
    assert release["uptime_seconds"] >= 0
    again = api.post(f"/api/projects/{first.project_id}/start/")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_live"


def test_rollback_through_the_api_serves_the_release_before_the_change(new_run, user):
    first, old = _greeter(new_run)
    api = client_for(user)
    change = _change(api, first.project_id, "also roll dice")
    drive(change.id)
    new = _live(first.project_id)

    response = api.post(f"/api/projects/{first.project_id}/rollback/", {}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["id"] == old.id
    live = _live(first.project_id)
    assert live.id == old.id and live.port == new.port
    assert http(live.url + "roll?sides=6")[0] == 404  # the release before the change has no dice
    assert http(live.url + "greet?name=Ada")[0] == 200
    # A later change builds on what serves now, not on the rolled-away commit.
    detail = api.get(f"/api/projects/{first.project_id}/").json()
    assert detail["health"]["live_release"]["id"] == old.id
    assert detail["health"]["live_release"]["commit_sha"] == old.commit_sha


def test_delete_tears_the_project_down_and_keeps_its_history(new_run, user):
    first, old = _greeter(new_run)
    api = client_for(user)

    response = api.delete(f"/api/projects/{first.project_id}/")

    assert response.status_code == 204
    assert not pids_with_marker(RELEASE_MARKER, str(old.id))
    assert Deployment.objects.get(id=old.id).status == "stopped"
    assert api.get(f"/api/projects/{first.project_id}/").status_code == 404
    assert first.project_id not in {p["id"] for p in api.get("/api/projects/").json()["results"]}
    assert Project.objects.get(id=first.project_id).deleted_at is not None
    assert PipelineRun.objects.filter(project_id=first.project_id).count() == 1  # history kept
    assert api.delete(f"/api/projects/{first.project_id}/").status_code == 404


def test_a_deletion_killed_before_its_teardown_is_finished_by_the_sweep(new_run, user):
    """The API marks the project deleted, then tears it down: killed in between, its release
    would serve a deleted project forever. The releases sweep finishes the teardown."""
    from orchestrator.maintenance import releases_reconcile
    from projects import services

    first, old = _greeter(new_run)
    services.project_mark_deleted(project_id=first.project_id)  # ...and the process dies here
    assert pids_with_marker(RELEASE_MARKER, str(old.id))
    assert releases.releases_probe()["probed"] == 0, "a deleted project's release is not watched or repaired"

    report = releases_reconcile()

    assert report.torn_down == [first.project_id]
    assert not pids_with_marker(RELEASE_MARKER, str(old.id))
    assert Deployment.objects.get(id=old.id).status == "stopped"
    assert releases_reconcile().torn_down == []  # done once
