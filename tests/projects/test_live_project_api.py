"""The API of a live project without running its pipeline: change requests, redeploys, stop, start,
rollback, delete, incidents and health; each refusal with its status and code.

(The same endpoints with real releases: tests/orchestrator/test_change_requests.py.)
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.scripted.catalogue import plan
from projects import deployments, incidents, runs, services
from projects.models import Deployment, IncidentEvent, PipelineRun, Project, RunEvent, Stage
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

PROJECTS = "/api/projects/"
DICE = {"description": "also roll dice"}


def _settle(run) -> None:
    for stage in [s.value for s in Stage]:
        claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=f"t-{run.id}-{stage}")
        if stage == Stage.NOTIFY:
            runs.run_succeed(run_id=run.id, result_message="It is live.")
        runs.stage_succeed(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={})


def _planned(user, description="a web service that greets people by name") -> Project:
    project, run = services.project_create(owner=user, description=description)
    _settle(run)
    return services.project_set_spec(project_id=project.id, spec=plan(description))


def _live_row(project: Project) -> Deployment:
    run = PipelineRun.objects.filter(project=project).latest("id")
    deployment = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha="a" * 40)
    deployments.deployment_go_live(deployment_id=deployment.id, url="http://greeter.example/")
    return Deployment.objects.get(id=deployment.id)


def _code(response) -> str:
    return response.json()["error"]["code"]


# --- change requests --------------------------------------------------------------------------
def test_a_change_request_starts_a_change_run_with_its_words(api, user):
    project = _planned(user)
    response = api.post(f"{PROJECTS}{project.id}/changes/", {"description": "  also roll dice "}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    run = PipelineRun.objects.get(id=body["run_id"])
    assert (run.kind, run.request, run.status) == ("change", "also roll dice", "queued")
    assert body["id"] == project.id and body["latest_run"]["id"] == run.id and body["latest_run"]["kind"] == "change"
    assert run.events.get(type=RunEvent.Type.RUN_QUEUED).payload == {"kind": "change"}


@pytest.mark.parametrize("body", [{}, {"description": ""}, {"description": "   "}, {"description": 12}])
def test_a_change_without_a_description_is_refused(api, user, body):
    project = _planned(user)
    response = api.post(f"{PROJECTS}{project.id}/changes/", body, format="json")
    assert response.status_code == 400
    assert not PipelineRun.objects.filter(project=project, kind="change").exists()


def test_a_change_to_someone_elses_project_is_not_found(user, other_user):
    project = _planned(user)
    response = client_for(other_user).post(f"{PROJECTS}{project.id}/changes/", {"description": "x"}, format="json")
    assert response.status_code == 404 and _code(response) == "project_not_found"


def test_a_change_while_a_run_is_in_progress_is_a_conflict(api, user):
    project = _planned(user)
    assert api.post(f"{PROJECTS}{project.id}/changes/", DICE, format="json").status_code == 201
    response = api.post(f"{PROJECTS}{project.id}/changes/", {"description": "also echo"}, format="json")
    assert response.status_code == 409 and _code(response) == "run_in_progress"


def test_a_change_to_a_project_without_a_plan_is_a_conflict(api, user):
    project, run = services.project_create(owner=user, description="a web service that greets people")
    _settle(run)
    response = api.post(f"{PROJECTS}{project.id}/changes/", {"description": "also roll dice"}, format="json")
    assert response.status_code == 409 and _code(response) == "not_planned"


def test_changes_are_rate_limited_like_creation(api, user, settings):
    settings.PROJECT_CREATE_LIMIT = 1
    project = _planned(user)
    first = api.post(f"{PROJECTS}{project.id}/changes/", {"description": "also roll dice"}, format="json")
    PipelineRun.objects.filter(id=first.json()["run_id"]).update(status="succeeded")
    response = api.post(f"{PROJECTS}{project.id}/changes/", {"description": "also echo"}, format="json")
    assert response.status_code == 429 and _code(response) == "change_rate_limited"


# --- redeploy ---------------------------------------------------------------------------------
def test_redeploy_of_a_project_never_deployed_is_a_conflict(api, user):
    project = _planned(user)
    response = api.post(f"{PROJECTS}{project.id}/redeploy/")
    assert response.status_code == 409 and _code(response) == "never_deployed"


def test_redeploy_starts_a_redeploy_run(api, user, other_user):
    project = _planned(user)
    _live_row(project)
    assert client_for(other_user).post(f"{PROJECTS}{project.id}/redeploy/").status_code == 404
    response = api.post(f"{PROJECTS}{project.id}/redeploy/")
    assert response.status_code == 201, response.content
    assert PipelineRun.objects.get(id=response.json()["run_id"]).kind == "redeploy"


# --- stop, start, rollback, delete: refusals ----------------------------------------------------
@pytest.mark.parametrize("action", ["stop", "start", "rollback"])
def test_engine_actions_on_someone_elses_project_are_not_found(user, other_user, action):
    project = _planned(user)
    response = client_for(other_user).post(f"{PROJECTS}{project.id}/{action}/", {}, format="json")
    assert response.status_code == 404 and _code(response) == "project_not_found"


@pytest.mark.parametrize("action", ["stop", "start", "rollback"])
def test_engine_actions_wait_for_a_run_in_progress(api, user, action):
    project, _ = services.project_create(owner=user, description="a web service that greets people")
    response = api.post(f"{PROJECTS}{project.id}/{action}/", {}, format="json")
    assert response.status_code == 409 and _code(response) == "run_in_progress"


def test_start_without_a_kept_release_is_a_conflict(api, user):
    project = _planned(user)
    response = api.post(f"{PROJECTS}{project.id}/start/")
    assert response.status_code == 409 and _code(response) == "no_release"


def test_start_of_a_live_project_is_a_conflict(api, user):
    project = _planned(user)
    _live_row(project)
    response = api.post(f"{PROJECTS}{project.id}/start/")
    assert response.status_code == 409 and _code(response) == "already_live"


def test_rollback_without_a_live_release_is_a_conflict(api, user):
    project = _planned(user)
    response = api.post(f"{PROJECTS}{project.id}/rollback/", {}, format="json")
    assert response.status_code == 409 and _code(response) == "not_live"


@pytest.mark.parametrize("release", ["one", 0, -3, 2**63])
def test_rollback_to_a_release_that_is_not_an_id_is_refused(api, user, release):
    project = _planned(user)
    response = api.post(f"{PROJECTS}{project.id}/rollback/", {"release": release}, format="json")
    assert response.status_code == 400


def test_rollback_to_a_release_of_another_project_is_not_found(api, user):
    project, elsewhere = _planned(user), _planned(user, "a service that echoes text")
    _live_row(project)
    other = _live_row(elsewhere)
    response = api.post(f"{PROJECTS}{project.id}/rollback/", {"release": other.id}, format="json")
    assert response.status_code == 404 and _code(response) == "release_not_found"


def test_stop_of_a_project_with_nothing_running_stops_nothing(api, user):
    project = _planned(user)
    response = api.post(f"{PROJECTS}{project.id}/stop/")
    assert response.status_code == 200 and response.json() == {"stopped": []}


def test_delete_while_a_run_is_in_progress_is_a_conflict(api, user):
    project, _ = services.project_create(owner=user, description="a web service that greets people")
    response = api.delete(f"{PROJECTS}{project.id}/")
    assert response.status_code == 409 and _code(response) == "run_in_progress"
    assert Project.objects.get(id=project.id).deleted_at is None


def test_delete_of_someone_elses_project_is_not_found(user, other_user):
    project = _planned(user)
    assert client_for(other_user).delete(f"{PROJECTS}{project.id}/").status_code == 404
    assert Project.objects.get(id=project.id).deleted_at is None


def test_a_deleted_project_is_gone_from_every_read_and_refuses_changes(api, user):
    project = _planned(user)
    assert api.delete(f"{PROJECTS}{project.id}/").status_code == 204
    assert api.get(f"{PROJECTS}{project.id}/").status_code == 404
    assert api.get(f"{PROJECTS}").json()["count"] == 0
    assert api.post(f"{PROJECTS}{project.id}/changes/", DICE, format="json").status_code == 404
    assert api.get(f"{PROJECTS}{project.id}/incidents/").status_code == 404
    # Its runs stay readable as history.
    assert api.get(f"/api/runs/{PipelineRun.objects.get(project=project).id}/").status_code == 200


# --- how it is: health and incidents -----------------------------------------------------------
def test_the_detail_shows_how_the_live_release_is(api, user):
    project = _planned(user)
    live = _live_row(project)
    Deployment.objects.filter(id=live.id).update(live_at=timezone.now() - timedelta(hours=2))
    deployments.deployment_probed(deployment_id=live.id, ok=True, ms=12, detail="healthy")
    services.deployment_set_usage(deployment_id=live.id, cpu_percent=1.5, memory_bytes=25_000_000)
    incident, _ = incidents.incident_open(deployment_id=live.id, reason="the release's process is gone")
    incidents.incident_step(incident_id=incident.id, type=IncidentEvent.Type.RESTARTING, restarted=True)

    health = api.get(f"{PROJECTS}{project.id}/").json()["health"]

    release = health["live_release"]
    assert (release["id"], release["url"], release["commit_sha"]) == (live.id, "http://greeter.example/", "a" * 40)
    assert 7190 < release["uptime_seconds"] < 7300
    assert release["probe"]["ok"] is True and release["probe"]["ms"] == 12 and release["probe"]["detail"] == "healthy"
    assert (release["cpu_percent"], release["memory_bytes"]) == (1.5, 25_000_000)
    assert (health["incidents_24h"], health["restarts_24h"]) == (1, 1)


def test_the_detail_of_a_project_with_nothing_live_says_so(api, user):
    project = _planned(user)
    health = api.get(f"{PROJECTS}{project.id}/").json()["health"]
    assert health == {"live_release": None, "incidents_24h": 0, "restarts_24h": 0}


def test_incidents_are_listed_with_their_events(api, user, other_user):
    project = _planned(user)
    live = _live_row(project)
    incident, _ = incidents.incident_open(deployment_id=live.id, reason="/health answered 500")
    incidents.incident_step(incident_id=incident.id, type=IncidentEvent.Type.RESTARTING, detail="restart 1")

    response = api.get(f"{PROJECTS}{project.id}/incidents/")

    assert response.status_code == 200
    [row] = response.json()
    assert (row["id"], row["deployment"], row["status"], row["reason"]) == (
        incident.id,
        live.id,
        "recovering",
        "/health answered 500",
    )
    assert [e["type"] for e in row["events"]] == ["detected", "restarting"]
    assert client_for(other_user).get(f"{PROJECTS}{project.id}/incidents/").status_code == 404
