"""The admin: every model's list and change page renders for a superuser, with real rows.

Rows are made by the services that own them; ``db`` keeps ``on_commit`` from enqueueing the pipeline.
"""

from __future__ import annotations

import html

import pytest
from django.urls import reverse

from agents import services as agent_services
from agents.models import AgentConfig, Role, Usage, WorkerSession
from projects import deployments, runs, services
from projects.models import Deployment, PipelineRun, Project, RunEvent, Stage, StageRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows(user):
    """One project with a run that reached the Deployer, its usage, worker, config and deployment."""
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    for stage in (Stage.ARCHITECT, Stage.PREPARER, Stage.DEVELOPER, Stage.TESTER):
        claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=f"task-{stage}")
        assert claim.state == runs.ClaimState.CLAIMED
        runs.stage_succeed(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={"stage": stage})
    developer = run.stages.get(stage=Stage.DEVELOPER)
    session = agent_services.session_create(
        project_id=project.id,
        run_id=run.id,
        role=Role.DEVELOPER,
        runtime="process",
        workspace_root="workspaces/greeter",
    )
    usage = agent_services.usage_record(
        project_id=project.id,
        stage_run_id=developer.id,
        session_id=session.id,
        role=Role.DEVELOPER,
        backend="scripted",
        model="scripted-1",
        input_tokens=1200,
        output_tokens=300,
        cost_usd="0.42",
    )
    config = agent_services.agent_config_for(role=Role.ARCHITECT)
    deployment = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha="c" * 40)
    deployments.deployment_go_live(deployment_id=deployment.id, url="http://greeter.localhost")
    return {
        "project": project,
        "run": run,
        "session": session,
        "usage": usage,
        "config": config,
        "deployment": deployment,
    }


MODELS = [
    ("projects", "project", "project"),
    ("projects", "pipelinerun", "run"),
    ("projects", "deployment", "deployment"),
    ("agents", "agentconfig", "config"),
    ("agents", "workersession", "session"),
    ("agents", "usage", "usage"),
]


@pytest.mark.parametrize(("app", "model", "key"), MODELS)
def test_changelist_renders_with_rows(admin_client, rows, app, model, key):
    response = admin_client.get(reverse(f"admin:{app}_{model}_changelist"))

    assert response.status_code == 200
    obj = rows[key]
    assert reverse(f"admin:{app}_{model}_change", args=[obj.pk]) in response.content.decode()


@pytest.mark.parametrize(("app", "model", "key"), MODELS)
def test_change_page_renders(admin_client, rows, app, model, key):
    obj = rows[key]
    obj.refresh_from_db()

    response = admin_client.get(reverse(f"admin:{app}_{model}_change", args=[obj.pk]))

    assert response.status_code == 200
    assert html.escape(str(obj)) in response.content.decode()


def test_run_change_page_shows_its_stages_and_events(admin_client, rows):
    run = rows["run"]

    response = admin_client.get(reverse("admin:projects_pipelinerun_change", args=[run.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    # Both inlines are present, with one form row per stage and per event.
    assert response.context["inline_admin_formsets"]
    stage_rows = StageRun.objects.filter(run=run).count()
    event_rows = RunEvent.objects.filter(run=run).count()
    assert page.count('id="stages-') >= stage_rows == 6
    assert page.count('id="events-') >= event_rows
    for label in Stage.labels:  # "Architect", ..., "Notify"
        assert f"<p>{label}</p>" in page, label
    for event_type in set(RunEvent.objects.filter(run=run).values_list("type", flat=True)):
        assert f"<p>{RunEvent.Type(event_type).label}</p>" in page, event_type
    assert "<p>Deployed</p>" in page  # deploy.live, recorded by deployment_go_live


def test_project_change_page_lists_its_runs(admin_client, rows):
    project, run = rows["project"], rows["run"]

    response = admin_client.get(reverse("admin:projects_project_change", args=[project.pk]))

    assert response.status_code == 200
    assert reverse("admin:projects_pipelinerun_change", args=[run.pk]) in response.content.decode()


def test_usage_changelist_title_shows_the_total_cost(admin_client, rows):
    agent_services.usage_record(
        project_id=rows["project"].id,
        stage_run_id=None,
        session_id=None,
        role=Role.TESTER,
        backend="scripted",
        cost_usd="0.08",
    )

    response = admin_client.get(reverse("admin:agents_usage_changelist"))

    assert response.status_code == 200
    assert Usage.objects.count() == 2
    title = response.context_data["title"]
    assert title.startswith("Usage: total $")
    assert float(title.removeprefix("Usage: total $")) == pytest.approx(0.50)


def test_admin_pages_require_staff(client, user, rows):
    client.force_login(user)  # an ordinary person, not staff

    response = client.get(reverse("admin:projects_pipelinerun_change", args=[rows["run"].pk]))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_rows_exist_as_the_services_made_them(rows):
    """The fixture's rows are what the admin pages above render (guards against an empty fixture)."""
    assert Project.objects.count() == 1
    assert PipelineRun.objects.get().cost_usd > 0
    assert WorkerSession.objects.get().state == WorkerSession.State.STARTING
    assert AgentConfig.objects.get().role == Role.ARCHITECT
    assert Deployment.objects.get().status == Deployment.Status.LIVE
