"""The HTTP API for projects and runs, against the real database and the real services.

The ``db`` fixture wraps each test in a transaction, so ``transaction.on_commit`` never fires and
no pipeline is enqueued: these tests see exactly the rows the services wrote.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import path
from rest_framework.test import APIClient
from rest_framework.views import APIView

from agents import services as agent_services
from agents.models import Role
from config import urls as config_urls
from projects import deployments, events, runs, services
from projects.models import PipelineRun, Project, RunEvent, Stage, StageRun
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

PROJECTS = "/api/projects/"
RUNS = "/api/runs/"
STAGES = [s.value for s in Stage]


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "extra"}, body
    return body["error"]


def counts() -> tuple[int, int, int]:
    return Project.objects.count(), PipelineRun.objects.count(), StageRun.objects.count()


def advance(run: PipelineRun, stages: list[str], *, cost: str | None = None) -> list[StageRun]:
    """Claim and succeed each stage in turn, as the pipeline's tasks would; record a cost on each."""
    done = []
    for n, stage in enumerate(stages):
        claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=f"task-{run.id}-{stage}-{n}")
        assert claim.state == runs.ClaimState.CLAIMED, (stage, claim.state)
        if cost is not None:
            agent_services.usage_record(
                project_id=run.project_id,
                stage_run_id=claim.stage_run.id,
                session_id=None,
                role=Role.ARCHITECT,
                backend="scripted",
                input_tokens=10,
                output_tokens=5,
                cost_usd=cost,
            )
        assert runs.stage_succeed(
            stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={"stage": stage}
        )
        done.append(claim.stage_run)
    return done


def finished_run(owner, *, cost: str | None = None, description: str = "a web service that greets people"):
    """A run that went through all six stages and succeeded."""
    project, run = services.project_create(owner=owner, description=description)
    advance(run, STAGES, cost=cost)
    assert runs.run_succeed(run_id=run.id, result_message="It is live.")
    run.refresh_from_db()
    return project, run


# --- POST /api/projects/ --------------------------------------------------------------
def test_create_returns_project_and_queued_run_with_six_stages(api, user):
    response = api.post(PROJECTS, {"description": "  a web service that greets people by name  "}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    project = Project.objects.get(id=body["id"])
    assert project.owner == user
    assert project.description == "a web service that greets people by name"
    assert body["description"] == project.description
    run = PipelineRun.objects.get(id=body["run_id"])
    assert run.project == project
    assert run.status == PipelineRun.Status.QUEUED
    assert run.kind == PipelineRun.Kind.CREATE
    assert body["latest_run"]["id"] == run.id
    assert body["latest_run"]["status"] == "queued"
    assert body["live_url"] is None
    assert Decimal(body["cost_usd"]) == 0
    stages = list(run.stages.order_by("id"))
    assert [s.stage for s in stages] == STAGES
    assert all(s.status == StageRun.Status.PENDING and s.iteration == 1 for s in stages)
    assert list(run.events.values_list("type", flat=True)) == [RunEvent.Type.RUN_QUEUED]


def test_create_without_description_is_rejected_naming_the_field(api):
    before = counts()

    response = api.post(PROJECTS, {}, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "validation_error"
    assert "description" in error["extra"]["fields"]
    assert "description" in error["message"]
    assert counts() == before


@pytest.mark.parametrize("description", ["", "   ", "\n\t  \n"])
def test_create_with_blank_description_is_rejected(api, description):
    before = counts()

    response = api.post(PROJECTS, {"description": description}, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "validation_error"
    assert "description" in error["extra"]["fields"]
    assert counts() == before


@pytest.mark.parametrize("description", [None, 12, 1.5, True, ["a service"], {"text": "a service"}])
def test_create_with_description_of_wrong_type_is_rejected(api, description):
    before = counts()

    response = api.post(PROJECTS, {"description": description}, format="json")

    # The schema says a string: a number is not one (DRF's CharField would take 12 as "12").
    assert response.status_code == 400, response.content
    assert error_of(response)["code"] == "validation_error"
    assert counts() == before


def test_create_with_50kb_description_is_rejected_and_creates_nothing(api):
    before = counts()
    runs_before = PipelineRun.objects.count()

    response = api.post(PROJECTS, {"description": "a greeting service " * 2700}, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "description_too_long"
    assert error["extra"]["limit"] == settings.PROJECT_DESCRIPTION_MAX_CHARS
    assert error["extra"]["length"] > 50_000
    assert counts() == before
    assert PipelineRun.objects.count() == runs_before
    assert RunEvent.objects.count() == 0


def test_create_accepts_description_at_the_limit_and_rejects_one_more_character(api):
    limit = settings.PROJECT_DESCRIPTION_MAX_CHARS

    at_limit = api.post(PROJECTS, {"description": "x" * limit}, format="json")
    over = api.post(PROJECTS, {"description": "y" * (limit + 1)}, format="json")

    assert at_limit.status_code == 201, at_limit.content
    assert over.status_code == 400
    assert error_of(over)["code"] == "description_too_long"
    assert list(Project.objects.values_list("description", flat=True)) == ["x" * limit]


@pytest.mark.parametrize("body", ['{"description": "a greeting service"', "not json at all", '{"description": }'])
def test_create_with_malformed_json_is_a_parse_error(api, body):
    before = counts()

    response = api.post(PROJECTS, data=body, content_type="application/json")

    assert response.status_code == 400
    assert error_of(response)["code"] == "parse_error"
    assert counts() == before


def test_create_with_json_that_is_not_an_object_is_rejected(api):
    response = api.post(PROJECTS, data='["a greeting service"]', content_type="application/json")

    assert response.status_code == 400
    assert error_of(response)["code"] == "validation_error"
    assert Project.objects.count() == 0


def test_create_with_unsupported_content_type_is_rejected(api):
    response = api.post(PROJECTS, data="a greeting service", content_type="text/plain")

    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"
    assert Project.objects.count() == 0


@pytest.mark.parametrize("text", ["a\u0000b service", "a \ud800 service"])
def test_create_with_characters_the_database_cannot_store_is_rejected(api, text):
    response = api.post(PROJECTS, data=json.dumps({"description": text}), content_type="application/json")

    assert response.status_code == 400
    assert error_of(response)["code"] == "validation_error"
    assert Project.objects.count() == 0


def test_create_without_token_is_not_authenticated(db):
    response = APIClient().post(PROJECTS, {"description": "a greeting service"}, format="json")

    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    assert Project.objects.count() == 0


def test_create_with_bad_token_is_refused(user):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token-0000000000000000000")

    response = client.post(PROJECTS, {"description": "a greeting service"}, format="json")

    assert response.status_code == 401
    assert error_of(response)["code"] == "authentication_failed"
    assert Project.objects.count() == 0


def test_create_for_inactive_user_is_refused(user):
    client = client_for(user)
    user.is_active = False
    user.save(update_fields=["is_active"])

    response = client.post(PROJECTS, {"description": "a greeting service"}, format="json")

    assert response.status_code == 401
    assert error_of(response)["code"] == "authentication_failed"
    assert Project.objects.count() == 0


# --- GET /api/projects/ ---------------------------------------------------------------
def test_list_shows_only_the_callers_projects(api, user, other_user):
    mine, _ = services.project_create(owner=user, description="my greeting service")
    services.project_create(owner=other_user, description="bob's echo service")

    response = api.get(PROJECTS)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    assert [p["id"] for p in body["results"]] == [mine.id]


def test_list_for_staff_shows_every_project(user, other_user, django_user_model):
    staff = django_user_model.objects.create_user(username="root", password="pw-root-123", is_staff=True)
    a, _ = services.project_create(owner=user, description="ada's service")
    b, _ = services.project_create(owner=other_user, description="bob's service")

    response = client_for(staff).get(PROJECTS)

    assert response.status_code == 200
    assert {p["id"] for p in response.json()["results"]} == {a.id, b.id}


def test_list_without_token_is_not_authenticated(db):
    response = APIClient().get(PROJECTS)

    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"


def test_list_shows_latest_run_live_url_and_total_cost(api, user):
    project, first = finished_run(user, cost="0.25")
    second = runs.run_create(project=project, kind=PipelineRun.Kind.CHANGE)
    claim = runs.stage_claim(run_id=second.id, stage=Stage.ARCHITECT, task_id="t-2")
    agent_services.usage_record(
        project_id=project.id,
        stage_run_id=claim.stage_run.id,
        session_id=None,
        role=Role.ARCHITECT,
        backend="scripted",
        cost_usd="0.5",
    )
    deployment = deployments.deployment_allocate(project_id=project.id, run_id=first.id, commit_sha="a" * 40)
    deployments.deployment_go_live(deployment_id=deployment.id, url="http://greeter.localhost")

    response = api.get(PROJECTS)

    assert response.status_code == 200
    [item] = response.json()["results"]
    assert item["latest_run"]["id"] == second.id
    assert item["latest_run"]["status"] == "running"
    assert item["live_url"] == "http://greeter.localhost"
    assert Decimal(item["cost_usd"]) == Decimal("0.25") * 6 + Decimal("0.5")


def test_list_query_count_does_not_grow_with_projects(api, user, settings):
    settings.API_TOKEN_CACHE_SECONDS = 0  # the token is read every time, so both counts have it

    def make(n: int) -> None:
        for i in range(n):
            project, run = finished_run(user, cost="0.1", description=f"service number {i}")
            deployment = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha=f"{i:040d}")
            deployments.deployment_go_live(deployment_id=deployment.id, url=f"http://s{i}.localhost")
            runs.run_create(project=project, kind=PipelineRun.Kind.REDEPLOY)

    make(2)
    with CaptureQueriesContext(connection) as two:
        response = api.get(PROJECTS)
    assert response.status_code == 200
    assert response.json()["count"] == 2

    make(4)
    with CaptureQueriesContext(connection) as six:
        response = api.get(PROJECTS)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 6
    assert all(p["live_url"] and p["latest_run"]["kind"] == "redeploy" for p in results)
    assert all(Decimal(p["cost_usd"]) == Decimal("0.6") for p in results)

    assert len(six) == len(two), [q["sql"] for q in six.captured_queries]
    # The token and the page with its count, rendered by PostgreSQL; elsewhere the page with its
    # count (a window function) and the page's latest runs.
    assert len(six) == (2 if connection.vendor == "postgresql" else 3), [q["sql"] for q in six.captured_queries]


def test_detail_shows_own_project(api, user):
    project, run = services.project_create(owner=user, description="a greeting service")

    response = api.get(f"{PROJECTS}{project.id}/")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == project.id
    assert body["latest_run"]["id"] == run.id


def test_detail_of_another_users_project_is_not_found(api, other_user):
    theirs, _ = services.project_create(owner=other_user, description="bob's echo service")

    response = api.get(f"{PROJECTS}{theirs.id}/")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


@pytest.mark.parametrize("project_id", ["999999", "0", "abc", "99999999999999999999999"])
def test_detail_of_unknown_project_is_not_found(api, project_id):
    response = api.get(f"{PROJECTS}{project_id}/")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_detail_without_token_is_not_authenticated(user):
    project, _ = services.project_create(owner=user, description="a greeting service")

    response = APIClient().get(f"{PROJECTS}{project.id}/")

    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"


# --- /api/runs/ -----------------------------------------------------------------------
def test_run_detail_shows_stages_events_duration_and_cost(api, user):
    project, run = finished_run(user, cost="0.125")

    response = api.get(f"{RUNS}{run.id}/")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == run.id
    assert body["project"] == project.id
    assert body["status"] == "succeeded"
    assert Decimal(body["cost_usd"]) == Decimal("0.125") * 6
    assert body["duration_seconds"] == pytest.approx((run.finished_at - run.started_at).total_seconds())
    assert body["duration_seconds"] >= 0

    assert [s["stage"] for s in body["stages"]] == STAGES
    rows = {s.id: s for s in run.stages.all()}
    for stage in body["stages"]:
        row = rows[stage["id"]]
        assert stage["status"] == "succeeded"
        assert stage["iteration"] == 1
        assert stage["started_at"] and stage["finished_at"]
        assert stage["duration_seconds"] == pytest.approx(row.duration_seconds)
        assert Decimal(stage["cost_usd"]) == Decimal("0.125")

    types = [e["type"] for e in body["events"]]
    expected = ["run.queued", "run.started"]
    for _ in STAGES:
        expected += ["stage.started", "stage.succeeded"]
    expected.append("run.succeeded")
    assert types == expected
    assert [e["stage"] for e in body["events"] if e["type"].startswith("stage.")] == [
        s for s in STAGES for _ in range(2)
    ]
    ids = [e["id"] for e in body["events"]]
    assert ids == sorted(ids)


def test_run_cost_reflects_recorded_usage(api, user):
    _, run = services.project_create(owner=user, description="a greeting service")
    claim = runs.stage_claim(run_id=run.id, stage=Stage.ARCHITECT, task_id="t-1")
    for cost in ("0.10", "0.05"):
        agent_services.usage_record(
            project_id=run.project_id,
            stage_run_id=claim.stage_run.id,
            session_id=None,
            role=Role.ARCHITECT,
            backend="scripted",
            model="m",
            cost_usd=cost,
        )

    body = api.get(f"{RUNS}{run.id}/").json()

    assert Decimal(body["cost_usd"]) == Decimal("0.15")
    architect = next(s for s in body["stages"] if s["stage"] == "architect")
    assert architect["status"] == "running"
    assert architect["finished_at"] is None
    assert architect["duration_seconds"] is None
    assert Decimal(architect["cost_usd"]) == Decimal("0.15")
    assert all(Decimal(s["cost_usd"]) == 0 for s in body["stages"] if s["stage"] != "architect")
    assert body["status"] == "running"
    assert body["duration_seconds"] is None


def test_run_detail_shows_every_iteration_after_a_loop_back(api, user):
    _, run = services.project_create(owner=user, description="a greeting service")
    advance(run, [Stage.ARCHITECT, Stage.PREPARER, Stage.DEVELOPER])
    claim = runs.stage_claim(run_id=run.id, stage=Stage.TESTER, task_id="t-tester")
    assert runs.stage_loop_back(
        stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={"failed": 1}, message="1 test failed"
    )

    body = api.get(f"{RUNS}{run.id}/").json()

    assert body["iteration"] == 2
    assert [(s["stage"], s["iteration"], s["status"]) for s in body["stages"]] == [
        ("architect", 1, "succeeded"),
        ("preparer", 1, "succeeded"),
        ("developer", 1, "succeeded"),
        ("tester", 1, "failed"),
        ("deployer", 1, "pending"),
        ("notify", 1, "pending"),
        ("developer", 2, "pending"),
        ("tester", 2, "pending"),
    ]
    assert body["events"][-1]["type"] == "tests.failed"


def test_run_detail_of_another_users_run_is_not_found(api, other_user):
    _, theirs = services.project_create(owner=other_user, description="bob's echo service")

    response = api.get(f"{RUNS}{theirs.id}/")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


@pytest.mark.parametrize("run_id", ["999999", "abc"])
def test_run_detail_of_unknown_run_is_not_found(api, run_id):
    response = api.get(f"{RUNS}{run_id}/")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_run_detail_without_token_is_not_authenticated(user):
    _, run = services.project_create(owner=user, description="a greeting service")

    response = APIClient().get(f"{RUNS}{run.id}/")

    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"


def test_run_list_shows_only_own_runs(api, user, other_user):
    _, mine = services.project_create(owner=user, description="my greeting service")
    services.project_create(owner=other_user, description="bob's echo service")

    response = api.get(RUNS)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    assert [r["id"] for r in body["results"]] == [mine.id]
    assert body["results"][0]["status"] == "queued"


def test_run_list_without_token_is_not_authenticated(db):
    response = APIClient().get(RUNS)

    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"


def test_runs_are_read_only(api, user):
    _, run = services.project_create(owner=user, description="a greeting service")

    response = api.delete(f"{RUNS}{run.id}/")

    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert PipelineRun.objects.filter(id=run.id).exists()


def test_run_detail_query_count_does_not_grow_with_stages_and_events(api, user, django_assert_max_num_queries):
    _, small = services.project_create(owner=user, description="a small run")
    advance(small, [Stage.ARCHITECT], cost="0.01")

    project, big = services.project_create(owner=user, description="a big run")
    advance(big, [Stage.ARCHITECT, Stage.PREPARER, Stage.DEVELOPER], cost="0.01")
    for i in range(2):  # two loop-backs: more stage rows and more events
        claim = runs.stage_claim(run_id=big.id, stage=Stage.TESTER, task_id=f"t-tester-{i}")
        agent_services.usage_record(
            project_id=project.id,
            stage_run_id=claim.stage_run.id,
            session_id=None,
            role=Role.TESTER,
            backend="scripted",
            cost_usd="0.01",
        )
        runs.stage_loop_back(
            stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={}, message="failed"
        )
        big.refresh_from_db()
        advance(big, [Stage.DEVELOPER], cost="0.01")
    for i in range(20):
        events.event_record(
            run_id=big.id, type=RunEvent.Type.AGENT_PROGRESS, stage=Stage.DEVELOPER, payload={"step": i}
        )

    with CaptureQueriesContext(connection) as few:
        small_body = api.get(f"{RUNS}{small.id}/").json()
    with django_assert_max_num_queries(len(few)):
        big_body = api.get(f"{RUNS}{big.id}/").json()

    assert len(small_body["events"]) < 5 < 30 < len(big_body["events"])
    assert len(big_body["stages"]) == 10
    assert len(few) <= 6, [q["sql"] for q in few.captured_queries]


# --- OpenAPI --------------------------------------------------------------------------
def test_openapi_schema_describes_the_projects_endpoint(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/api/projects/" in schema["paths"]
    assert "post" in schema["paths"]["/api/projects/"]
    assert "/api/runs/{id}/" in schema["paths"]


# --- paging: bounded, and a value that is not a number in range is refused ------------------
@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        f"limit={2**63}",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "limit=%C2%B2",
        "offset=null",
        "offset=-1",
        f"offset={2**63}",
        "offset=",
    ],
)
def test_list_with_a_paging_value_out_of_range_is_rejected(api, user, query):
    services.project_create(owner=user, description="a greeting service")

    for url in (PROJECTS, RUNS):
        response = api.get(f"{url}?{query}")

        assert response.status_code == 400, (url, query, response.content)
        error = error_of(response)
        assert error["code"] == "bad_parameter"
        assert error["extra"]["parameter"] in query


def test_list_pages_up_to_the_largest_page(api, user):
    for i in range(3):
        services.project_create(owner=user, description=f"service number {i}")

    body = api.get(f"{PROJECTS}?limit=100&offset=1").json()
    assert body["count"] == 3 and len(body["results"]) == 2
    body = api.get(f"{PROJECTS}?limit=1").json()
    assert len(body["results"]) == 1 and body["next"] and body["previous"] is None


# --- under /api/ every error is JSON in the envelope ------------------------------------
def crashing_view(request):
    raise RuntimeError("a bug")


class CrashingApiView(APIView):
    def get(self, request):
        raise RuntimeError("a bug in a DRF view")


urlpatterns = [  # this module doubles as a URLconf: the real one, plus routes that crash
    path("api/test-crash/", crashing_view),
    path("api/test-crash-drf/", CrashingApiView.as_view()),
    *config_urls.urlpatterns,
]


@pytest.mark.parametrize("url", ["/api/nothing-here/", "/api/runs/abc/events/", "/api/projects/1/nope/"])
def test_an_unknown_api_path_is_a_json_404(api, url):
    response = api.get(url)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert error_of(response)["code"] == "not_found"


def test_an_unknown_path_outside_the_api_stays_html(api):
    assert "json" not in api.get("/not-the-api/")["Content-Type"]


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("url", ["/api/test-crash/", "/api/test-crash-drf/"])
def test_a_crash_is_a_json_500_that_tells_nothing_inside(user, url):
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user)

    response = client.get(url)

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    error = error_of(response)
    assert error["code"] == "server_error"
    assert "bug" not in error["message"]


def test_a_foreign_host_is_a_json_400(api):
    response = api.get(PROJECTS, HTTP_HOST="evil.example")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert error_of(response)["code"] == "disallowed_host"


def test_a_10mb_body_is_refused_with_413_before_it_is_read(api):
    body = json.dumps({"description": "a greeting service " * 550_000})

    response = api.post(PROJECTS, data=body, content_type="application/json")

    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert error_of(response)["code"] == "payload_too_large"
    assert Project.objects.count() == 0


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deeply_nested_json_is_a_parse_error(api, depth):
    body = '{"description": ' + "[" * depth + "]" * depth + "}"

    response = api.post(PROJECTS, data=body, content_type="application/json")

    assert response.status_code == 400
    assert error_of(response)["code"] == "parse_error"
    assert Project.objects.count() == 0


def test_deeply_nested_json_to_the_telegram_webhook_is_a_400_not_a_crash(client, settings):
    settings.TELEGRAM_WEBHOOK_SECRET = "webhook-secret-for-tests"
    body = "[" * 200_000 + "]" * 200_000

    response = client.post(
        "/telegram/webhook/",
        data=body,
        content_type="application/json",
        HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN="webhook-secret-for-tests",
    )

    assert response.status_code == 400
    assert response.json() == {"ok": False, "error": "the body is not JSON"}


def test_an_accept_header_that_cannot_be_served_is_a_406_with_its_own_code(api):
    response = api.get(PROJECTS, HTTP_ACCEPT="application/xml")

    assert response.status_code == 406
    assert error_of(response)["code"] == "not_acceptable"


def test_a_bad_token_on_the_schema_is_a_json_401_not_yaml(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token-0000000000000000000")

    response = client.get("/api/schema/")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert error_of(response)["code"] == "authentication_failed"


# --- the schema tells the truth ---------------------------------------------------------
@pytest.fixture
def schema(db) -> dict:
    response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_documents_the_error_envelope_on_every_operation(schema):
    error_ref = {"$ref": "#/components/schemas/Error"}
    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status in ("400", "401", "403", "406", *(["404"] if "{" in route else [])):
                response = operation["responses"].get(status)
                assert response, (method, route, status)
                assert response["content"] == {"application/json": {"schema": error_ref}}, (method, route, status)
    assert "429" in schema["paths"]["/api/runs/{id}/events/"]["get"]["responses"]


def test_the_schema_documents_the_worker_api(schema):
    assert schema["components"]["securitySchemes"]["workerToken"]["in"] == "header"
    for endpoint, model in [("progress", "ProgressIn"), ("ask", "AskIn"), ("result", "AgentResult")]:
        operation = schema["paths"][f"/api/runs/{{run_id}}/worker/{endpoint}/"]["post"]
        assert operation["security"] == [{"workerToken": []}]
        assert operation["requestBody"]["content"] == {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}
        }
        assert set(operation["responses"]) >= {"202", "400", "401", "403", "413", "415"}


def test_the_schema_documents_what_the_api_really_does(schema):
    components = schema["components"]["schemas"]
    assert components["RunDetail"]["properties"]["duration_seconds"]["type"] == ["number", "null"]
    assert components["StageRun"]["properties"]["duration_seconds"]["type"] == ["number", "null"]
    description = components["ProjectCreate"]["properties"]["description"]
    assert (description["minLength"], description["maxLength"]) == (1, settings.PROJECT_DESCRIPTION_MAX_CHARS)
    events = {p["name"]: p for p in schema["paths"]["/api/runs/{id}/events/"]["get"]["parameters"]}
    assert events["Last-Event-ID"]["in"] == "header" and events["after"]["in"] == "query"
    listing = {p["name"]: p["schema"] for p in schema["paths"]["/api/projects/"]["get"]["parameters"]}
    assert listing["limit"] == {"type": "integer", "minimum": 1, "maximum": 100}
    assert listing["offset"]["minimum"] == 0


def test_creating_projects_too_fast_is_a_429_in_the_envelope(api, settings):
    settings.PROJECT_CREATE_LIMIT = 2
    for _ in range(2):
        assert api.post(PROJECTS, {"description": "a web service that echoes text"}, format="json").status_code == 201

    response = api.post(PROJECTS, {"description": "a web service that echoes text"}, format="json")

    assert response.status_code == 429
    assert error_of(response)["code"] == "project_rate_limited"
    assert Project.objects.count() == 2


# --- what the fast read paths promise ---------------------------------------------------------
def test_the_list_leaves_out_the_spec_and_the_detail_has_it(api, user):
    project, _ = services.project_create(owner=user, description="a greeting service")
    Project.objects.filter(id=project.id).update(spec={"name": "Greeter", "features": []})

    row = api.get(PROJECTS).json()["results"][0]
    detail = api.get(f"{PROJECTS}{project.id}/").json()

    assert "spec" not in row and "health" not in row
    assert detail["spec"] == {"name": "Greeter", "features": []}
    assert {k: v for k, v in detail.items() if k not in ("spec", "health")} == row


def test_times_are_rendered_as_drf_renders_them(api, user):
    """The database renders the times (selectors.UtcIso): the same text DRF's DateTimeField gives,
    with and without microseconds, and null when unset."""
    from datetime import UTC, datetime

    from rest_framework.fields import DateTimeField

    project, run = services.project_create(owner=user, description="a greeting service")
    whole = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    fraction = datetime(2026, 3, 4, 5, 16, 7, 120000, tzinfo=UTC)
    PipelineRun.objects.filter(id=run.id).update(started_at=whole, finished_at=fraction)
    StageRun.objects.filter(run=run, stage=Stage.ARCHITECT).update(started_at=fraction, finished_at=None)

    body = api.get(f"{RUNS}{run.id}/").json()
    drf = DateTimeField()

    assert body["started_at"] == drf.to_representation(whole) == "2026-03-04T05:06:07Z"
    assert body["finished_at"] == drf.to_representation(fraction) == "2026-03-04T05:16:07.120000Z"
    assert body["duration_seconds"] == 600.12
    architect = next(s for s in body["stages"] if s["stage"] == Stage.ARCHITECT)
    assert (architect["started_at"], architect["finished_at"], architect["duration_seconds"]) == (
        drf.to_representation(fraction),
        None,
        None,
    )
    listed = api.get(PROJECTS).json()["results"][0]
    assert listed["latest_run"]["started_at"] == "2026-03-04T05:06:07Z"
    assert listed["created_at"] == drf.to_representation(Project.objects.get(id=project.id).created_at)


def test_a_run_is_read_in_one_query_on_postgresql(api, user, django_assert_num_queries):
    _, run = services.project_create(owner=user, description="a greeting service")
    api.get(f"{RUNS}{run.id}/")  # the token is remembered from here on
    # PostgreSQL renders the body in one statement; elsewhere: the run with its stages, its events.
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 2):
        response = api.get(f"{RUNS}{run.id}/")
    assert response.status_code == 200 and len(response.json()["stages"]) == 6


@pytest.mark.parametrize("path", [PROJECTS, RUNS])
def test_a_page_past_the_end_still_counts_everything(api, user, path):
    for i in range(3):
        services.project_create(owner=user, description=f"service number {i}")

    assert api.get(f"{path}?limit=2&offset=2").json()["count"] == 3
    past = api.get(f"{path}?limit=2&offset=7").json()
    assert (past["count"], past["results"]) == (3, [])


def test_a_deleted_token_is_refused_once_the_cache_lets_it_go(user, settings):
    import time

    from rest_framework.authtoken.models import Token

    settings.API_TOKEN_CACHE_SECONDS = 0.3
    client = client_for(user)
    assert client.get(PROJECTS).status_code == 200
    Token.objects.filter(user=user).delete()

    assert client.get(PROJECTS).status_code == 200  # remembered for API_TOKEN_CACHE_SECONDS
    time.sleep(0.35)
    response = client.get(PROJECTS)
    assert response.status_code == 401
    assert error_of(response)["code"] == "authentication_failed"


def test_without_the_token_cache_a_deleted_token_is_refused_at_once(user, settings):
    from rest_framework.authtoken.models import Token

    settings.API_TOKEN_CACHE_SECONDS = 0
    client = client_for(user)
    assert client.get(PROJECTS).status_code == 200
    Token.objects.filter(user=user).delete()

    assert client.get(PROJECTS).status_code == 401


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL renders these bodies itself")
def test_the_bodies_postgresql_renders_are_those_rendered_from_rows(user, other_user):
    """selectors.project_page_json / run_detail_json (what the API sends on PostgreSQL) against
    the rows rendered in Python (what it sends elsewhere): the same JSON."""
    from projects import selectors
    from projects.api import render_projects, render_run_detail

    made = []
    for i in range(4):
        project, run = finished_run(user, cost="0.1", description=f"service number {i}")
        if i % 2 == 0:
            deployment = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha=f"{i:040d}")
            deployments.deployment_go_live(deployment_id=deployment.id, url=f"http://s{i}.localhost")
        made.append(run)
    services.project_create(owner=user, description="a run that has only just started")
    services.project_create(owner=other_user, description="someone else's service")
    RunEvent.objects.create(run=made[0], type=RunEvent.Type.AGENT_PROGRESS, payload={"note": 'ünïcode "quoted"\n'})

    for limit, offset in ((2, 0), (2, 2), (10, 0), (3, 9)):
        total, text = selectors.project_page_json(user, limit=limit, offset=offset)
        rows = list(selectors.project_rows(user, with_spec=False)[offset : offset + limit])
        assert total == 5
        assert json.loads(text) == json.loads(json.dumps(render_projects(rows))), (limit, offset)
    for run in [*made, PipelineRun.objects.filter(project__owner=user).order_by("-id").first()]:
        text = selectors.run_detail_json(user, run.id)
        assert json.loads(text) == json.loads(json.dumps(render_run_detail(*selectors.run_detail_rows(user, run.id))))
    someone_elses = PipelineRun.objects.exclude(project__owner=user).first()
    assert selectors.run_detail_json(user, someone_elses.id) is None
    assert selectors.run_detail_rows(user, someone_elses.id) is None
