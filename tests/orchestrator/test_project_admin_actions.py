"""Admin → Projects: the engine's actions ask first, then act and say what happened; Admin →
Incidents shows each outage with its steps, read-only."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages

from agents.scripted.catalogue import plan
from projects import deployments, incidents, runs, services
from projects.models import IncidentEvent, PipelineRun, Stage

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/projects/project/"


@pytest.fixture
def staff(client, django_user_model):
    admin_user = django_user_model.objects.create_superuser(username="operator")
    client.force_login(admin_user)
    return client


@pytest.fixture
def project(user):
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    for stage in [s.value for s in Stage]:
        claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=f"t-{stage}")
        if stage == Stage.NOTIFY:
            runs.run_succeed(run_id=run.id, result_message="It is live.")
        runs.stage_succeed(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={})
    return services.project_set_spec(project_id=project.id, spec=plan("a web service that greets people by name"))


def _said(response) -> list[str]:
    return [m.message for m in get_messages(response.wsgi_request)]


def test_a_change_request_asks_for_the_change_then_starts_its_run(staff, project):
    asked = staff.post(CHANGELIST, {"action": "request_change", "_selected_action": [project.id]})
    assert asked.status_code == 200
    assert b'name="description"' in asked.content and b"Start the change" in asked.content
    assert not PipelineRun.objects.filter(project=project, kind="change").exists()

    empty = staff.post(
        CHANGELIST, {"action": "request_change", "_selected_action": [project.id], "confirm": "1", "description": ""}
    )
    assert empty.status_code == 200 and b"This field is required" in empty.content

    done = staff.post(
        CHANGELIST,
        {"action": "request_change", "_selected_action": [project.id], "confirm": "1", "description": "also roll dice"},
        follow=True,
    )
    run = PipelineRun.objects.get(project=project, kind="change")
    assert run.request == "also roll dice"
    assert f"Greeter: change run #{run.id} started" in _said(done)


def test_redeploy_stop_start_and_rollback_confirm_first_and_report_refusals(staff, project):
    for action in ("redeploy", "stop_releases", "start_release", "roll_back"):
        asked = staff.post(CHANGELIST, {"action": action, "_selected_action": [project.id]})
        assert asked.status_code == 200 and b'name="confirm"' in asked.content, action

    said = []
    for action in ("redeploy", "stop_releases", "start_release", "roll_back"):
        done = staff.post(CHANGELIST, {"action": action, "_selected_action": [project.id], "confirm": "1"}, follow=True)
        said += _said(done)
    assert said == [
        "Greeter: The project was never deployed: there is nothing to redeploy.",
        "Greeter: nothing was running",
        "Greeter: The project has no kept release to start.",
        "Greeter: The project has no live release to roll back.",
    ]


def test_an_incident_shows_its_steps_read_only(staff, project):
    run = PipelineRun.objects.get(project=project)
    deployment = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha="b" * 40)
    deployments.deployment_go_live(deployment_id=deployment.id, url="http://greeter.example/")
    incident, _ = incidents.incident_open(deployment_id=deployment.id, reason="the release's process is gone")
    incidents.incident_step(incident_id=incident.id, type=IncidentEvent.Type.RESTARTING, detail="restart 1")

    page = staff.get(f"/admin/projects/incident/{incident.id}/change/")

    assert page.status_code == 200
    assert b"the release&#x27;s process is gone" in page.content and b"restart 1" in page.content
    assert b'name="_save"' not in page.content
    assert staff.get("/admin/projects/incident/add/").status_code == 403
