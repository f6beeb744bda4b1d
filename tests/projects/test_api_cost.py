"""What the list endpoints cost: the same few queries for a page of 2 as for a page of 12, and a
row renders exactly what the detail serializers render (one serializer is reused for every row).
"""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents import services as agent_services
from agents.models import Role
from projects import deployments, runs, services
from projects.api import RunSummarySerializer
from projects.models import PipelineRun, Stage

pytestmark = pytest.mark.django_db

PROJECTS = "/api/projects/"
RUNS = "/api/runs/"


@pytest.fixture(autouse=True)
def no_create_limit(settings):
    settings.PROJECT_CREATE_LIMIT = 0  # these tests make more projects than one person may at once


def make_projects(owner, n: int) -> list[PipelineRun]:
    """n projects, each with a run whose first stages cost money; every other one live."""
    made = []
    for i in range(n):
        project, run = services.project_create(owner=owner, description=f"service number {i}")
        for stage in (Stage.ARCHITECT, Stage.PREPARER):
            claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=f"t-{run.id}-{stage}")
            agent_services.usage_record(
                project_id=project.id,
                stage_run_id=claim.stage_run.id,
                session_id=None,
                role=Role.ARCHITECT,
                backend="scripted",
                cost_usd="0.03",
            )
            runs.stage_succeed(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={})
        if i % 2 == 0:
            deployment = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha=f"{i:040d}")
            deployments.deployment_go_live(deployment_id=deployment.id, url=f"http://s{i}.localhost")
        made.append(run)
    return made


@pytest.mark.parametrize("path", [PROJECTS, RUNS])
def test_a_list_page_takes_the_same_queries_whatever_its_size(api, user, path, django_assert_max_num_queries):
    make_projects(user, 12)
    with CaptureQueriesContext(connection) as small:
        response = api.get(f"{path}?limit=2")
    assert response.status_code == 200 and len(response.json()["results"]) == 2

    with django_assert_max_num_queries(len(small)):
        response = api.get(f"{path}?limit=12")
    assert response.status_code == 200
    assert len(response.json()["results"]) == 12
    # The token (unless remembered), the page with its count and (projects) the page's latest runs.
    assert len(small) <= 3, [q["sql"] for q in small.captured_queries]


def test_a_project_row_shows_its_latest_run_as_the_run_summary_does(api, user):
    made = make_projects(user, 3)
    rows = {row["id"]: row for row in api.get(PROJECTS).json()["results"]}
    for run in made:
        run = PipelineRun.objects.get(id=run.id)
        row = rows[run.project_id]
        assert row["latest_run"] == json.loads(json.dumps(RunSummarySerializer(run).data, default=str))
        assert row["cost_usd"] == "0.060000"
        assert (row["live_url"] is not None) == (made.index(run) % 2 == 0)


def test_a_run_shows_what_each_of_its_stages_cost(api, user):
    run = make_projects(user, 1)[0]
    stages = {s["stage"]: s for s in api.get(f"{RUNS}{run.id}/").json()["stages"]}
    assert stages["architect"]["cost_usd"] == "0.030000"
    assert stages["preparer"]["cost_usd"] == "0.030000"
    assert stages["developer"]["cost_usd"] == "0"
