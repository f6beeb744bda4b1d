"""The project's bot over the API: ``PUT/GET/DELETE /api/projects/<id>/bot/``, owner-scoped, checked
with the product's Bot API stand-in playing Telegram; the token is in no response, row or log line.
And the secrets API refusing TELEGRAM_BOT_TOKEN for a bot project, pointing at this endpoint."""

from __future__ import annotations

import pytest

from agents import services as agent_services
from agents.models import Escalation
from orchestrator import bots
from orchestrator.telegram.standin import StandIn
from projects import runs, services
from projects.models import Deployment, OutboundMessage, Project, RunEvent
from secrets_meta.models import BotToken, SecretAudit, SecretValue
from secrets_meta.stores import BOTS_SCOPE, get_store
from tests.conftest import client_for, rendered_logs

pytestmark = pytest.mark.django_db

DICE = "a telegram bot that rolls dice"


@pytest.fixture
def botapi(settings):
    server = StandIn().start()
    settings.TELEGRAM_API_URL = server.api_url
    yield server
    server.stop()


@pytest.fixture
def project(user) -> Project:
    project, _ = services.project_create(owner=user, description=DICE, own_bot=True)
    return project


def url(project) -> str:
    return f"/api/projects/{project.id}/bot/"


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "extra"}, body
    return body["error"]


def nowhere_in_plain_text(token: str) -> None:
    assert not OutboundMessage.objects.filter(text__contains=token).exists()
    assert not Escalation.objects.filter(answer__contains=token).exists()
    assert token not in str(list(Escalation.objects.values_list("context", flat=True)))
    assert token not in str(list(RunEvent.objects.values_list("payload", flat=True)))
    assert not SecretAudit.objects.filter(detail__contains=token).exists()
    assert token not in str(list(BotToken.objects.values()))
    assert not SecretValue.objects.filter(ciphertext__contains=token).exists()


# --- PUT ------------------------------------------------------------------------------------------
def test_put_checks_the_token_and_answers_the_bot_never_the_token(
    user, project, botapi, django_capture_on_commit_callbacks
):
    token = botapi.add_bot("dice_own_bot")

    with rendered_logs() as rendered, django_capture_on_commit_callbacks() as callbacks:
        response = client_for(user).put(url(project), {"token": token}, format="json")

    assert response.status_code == 200, response.content
    assert response.json() == {"username": "dice_own_bot", "bot_id": int(token.split(":")[0]), "source": "user"}
    assert token.encode() not in response.content
    row = BotToken.objects.get()
    assert (row.status, row.source, row.project_id) == ("assigned", "user", project.id)
    assert get_store().get(BOTS_SCOPE, row.store_name) == token
    assert botapi.calls(token) == [("getMe", 200), ("getWebhookInfo", 200), ("getUpdates", 200)]
    assert len(callbacks) >= 1  # escalations.secrets_provided: a run waiting for the token goes on
    nowhere_in_plain_text(token)
    assert "bot_own_token_taken" in rendered.getvalue()
    assert "[secret:TELEGRAM_BOT_TOKEN]/getMe" in rendered.getvalue()  # the lines were there, redacted
    assert token not in rendered.getvalue()


def test_a_run_waiting_for_its_token_goes_on_once_it_is_put(user, project, botapi):
    run = project.runs.get()
    runs.stage_claim(run_id=run.id, stage="architect", task_id="t-1")
    escalation = agent_services.escalation_raise(
        run_id=run.id, stage="deployer", reason="bot_token", question="Your bot needs a Telegram bot token."
    )
    token = botapi.add_bot("waited_for_bot")

    assert client_for(user).put(url(project), {"token": token}, format="json").status_code == 200
    agent_services.escalation_values_provided(project_id=project.id)  # what escalations.secrets_provided does

    escalation.refresh_from_db()
    assert (escalation.status, escalation.action, escalation.answer) == ("answered", "provided", "")
    nowhere_in_plain_text(token)


@pytest.mark.parametrize("refusal", ["format", "rejected", "webhook", "polled", "in_use"])
def test_each_refusal_of_the_chain_is_a_400_with_its_code_and_never_the_token(
    user, other_user, project, botapi, refusal
):
    token = botapi.add_bot("refused_bot")
    if refusal == "format":
        token = "12345:tooshort"
    elif refusal == "rejected":
        botapi.revoke(token)
    elif refusal == "webhook":
        botapi.set_webhook(token, "https://elsewhere.example/hook")
    elif refusal == "polled":
        botapi.start_foreign_poller(token)
    else:
        theirs, _ = services.project_create(owner=other_user, description=DICE, own_bot=True)
        bots.own_token_intake(theirs.id, token, actor="test")

    response = client_for(user).put(url(project), {"token": token}, format="json")

    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["code"] == f"bot_token_{refusal}"
    assert token not in error["message"] and token.encode() not in response.content
    assert not BotToken.objects.filter(project_id=project.id).exists()


def test_telegram_unreachable_is_a_503_and_changes_nothing(user, project, settings):
    settings.TELEGRAM_API_URL = "http://127.0.0.1:9/bot{0}/{1}"  # nothing listens there

    response = client_for(user).put(url(project), {"token": "123456789:" + "A" * 35}, format="json")

    assert response.status_code == 503, response.content
    assert error_of(response)["code"] == "bot_token_unchecked"
    assert not BotToken.objects.exists()


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 123456}, {"token": None}, {"token": "1:" + "a" * 300}])
def test_a_body_without_a_token_as_text_is_a_400(user, project, body):
    response = client_for(user).put(url(project), body, format="json")

    assert response.status_code == 400 and error_of(response)["code"] == "validation_error"
    assert "token" in error_of(response)["extra"]["fields"] and not BotToken.objects.exists()


def test_a_project_planned_as_a_web_service_runs_no_bot(user, botapi):
    project, _ = services.project_create(owner=user, description="a web service that greets people")
    Project.objects.filter(id=project.id).update(kind="web_service")

    response = client_for(user).put(url(project), {"token": botapi.add_bot("web_bot")}, format="json")

    assert response.status_code == 409 and error_of(response)["code"] == "not_a_bot_project"
    assert not BotToken.objects.exists()


# --- who may ------------------------------------------------------------------------------------
def test_another_persons_project_is_not_found_for_every_method(other_user, project, botapi):
    token = botapi.add_bot("not_yours_bot")
    client = client_for(other_user)

    answers = [
        client.put(url(project), {"token": token}, format="json"),
        client.get(url(project)),
        client.delete(url(project)),
    ]

    assert [(r.status_code, error_of(r)["code"]) for r in answers] == [(404, "project_not_found")] * 3
    assert botapi.calls(token) == [] and not BotToken.objects.exists()


def test_staff_may_give_a_persons_project_its_bot(django_user_model, project, botapi):
    staff = django_user_model.objects.create_user(username="operator", is_staff=True)

    response = client_for(staff).put(url(project), {"token": botapi.add_bot("staff_given_bot")}, format="json")

    assert response.status_code == 200 and BotToken.objects.get().project_id == project.id
    assert SecretAudit.objects.filter(bot_token__isnull=False, actor=f"user:{staff.id}").exists()


def test_without_credentials_it_is_401(project):
    from rest_framework.test import APIClient

    assert APIClient().get(url(project)).status_code == 401


# --- GET and DELETE -----------------------------------------------------------------------------
def test_get_without_a_bot_is_404_no_bot(user, project):
    response = client_for(user).get(url(project))

    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "no_bot" and f"PUT /api/projects/{project.id}/bot/" in error["message"]


def test_get_answers_the_bot_its_source_and_status(user, project, botapi):
    token = botapi.add_bot("shown_bot")
    bots.own_token_intake(project.id, token, actor="test")

    response = client_for(user).get(url(project))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"username", "bot_id", "source", "status", "last_validated_at", "last_error"}
    assert (body["username"], body["source"], body["status"]) == ("shown_bot", "user", "assigned")
    assert body["last_error"] == "" and body["bot_id"] == int(token.split(":")[0])
    assert token.encode() not in response.content


def test_delete_lets_a_persons_own_bot_go_and_forgets_its_token_and_is_idempotent(user, project, botapi):
    token = botapi.add_bot("let_go_bot")
    row = bots.own_token_intake(project.id, token, actor="test")
    client = client_for(user)

    first, second = client.delete(url(project)), client.delete(url(project))

    assert (first.status_code, second.status_code) == (204, 204)
    row.refresh_from_db()
    assert (row.status, row.project_id) == ("retired", None)
    assert get_store().get(BOTS_SCOPE, row.store_name) is None
    assert ("deleteWebhook", 200) in botapi.calls(token) and ("deleteMyCommands", 200) in botapi.calls(token)
    assert client.get(url(project)).status_code == 404


def test_delete_gives_a_pool_bot_back_to_the_pool(user, botapi):
    token = botapi.add_bot("pool_bot")
    bots.pool_add(token)
    project, _ = services.project_create(owner=user, description=DICE)
    assert bots.bot_for_project(project.id).username == "pool_bot"

    assert client_for(user).delete(url(project)).status_code == 204

    assert BotToken.objects.get().status == "free"


def test_delete_is_refused_while_a_release_runs_as_the_bot(user, project, botapi):
    bots.own_token_intake(project.id, botapi.add_bot("busy_bot"), actor="test")
    Deployment.objects.create(project=project, run=project.runs.get(), status="live", port=18999, commit_sha="a" * 40)

    response = client_for(user).delete(url(project))

    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "bot_serving" and "@busy_bot" in error["message"]
    assert BotToken.objects.get().status == "assigned"


# --- the secrets API points here ---------------------------------------------------------------
def test_the_secrets_api_refuses_a_bot_projects_token_and_points_at_the_bot_endpoint(user, project, botapi):
    token = botapi.add_bot("sneaky_bot")

    response = client_for(user).put(
        f"/api/projects/{project.id}/secrets/TELEGRAM_BOT_TOKEN/", {"value": token}, format="json"
    )

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "secret_name_reserved" and f"/api/projects/{project.id}/bot/" in error["message"]
    assert error["extra"] == {"use": f"/api/projects/{project.id}/bot/"}
    assert token.encode() not in response.content
    assert not SecretValue.objects.exists() and botapi.calls(token) == []


def test_a_web_service_may_keep_a_telegram_token_as_a_plain_secret(user):
    project, _ = services.project_create(owner=user, description="a web service that posts to my channel")
    Project.objects.filter(id=project.id).update(kind="web_service")

    response = client_for(user).put(
        f"/api/projects/{project.id}/secrets/TELEGRAM_BOT_TOKEN/", {"value": "123:" + "b" * 35}, format="json"
    )

    assert response.status_code == 200 and response.json()["name"] == "TELEGRAM_BOT_TOKEN"


# --- own_bot at creation ---------------------------------------------------------------------------
def test_post_projects_with_own_bot_creates_a_project_that_waits_for_its_own_bot(user, botapi):
    bots.pool_add(botapi.add_bot("pool_left_alone_bot"))

    response = client_for(user).post("/api/projects/", {"description": DICE, "own_bot": True}, format="json")

    assert response.status_code == 201, response.content
    project = Project.objects.get(id=response.json()["id"])
    assert project.own_bot is True
    assert bots.bot_for_project(project.id) is None  # never a pool bot: the run asks for the person's
    assert BotToken.objects.get().status == "free"


@pytest.mark.parametrize("body", [{"description": DICE}, {"description": DICE, "own_bot": False}])
def test_post_projects_without_own_bot_takes_from_the_pool(user, body):
    response = client_for(user).post("/api/projects/", body, format="json")

    assert response.status_code == 201 and Project.objects.get().own_bot is False


@pytest.mark.parametrize("own_bot", ["yes", 1, "true", None, [True]])
def test_post_projects_own_bot_must_be_true_or_false(user, own_bot):
    response = client_for(user).post("/api/projects/", {"description": DICE, "own_bot": own_bot}, format="json")

    assert response.status_code == 400 and error_of(response)["code"] == "validation_error"
    assert "own_bot" in error_of(response)["extra"]["fields"]
    assert not Project.objects.exists()


def test_post_projects_as_a_form_takes_own_bot_as_text(user):
    response = client_for(user).post("/api/projects/", {"description": DICE, "own_bot": "true"}, format="multipart")

    assert response.status_code == 201 and Project.objects.get().own_bot is True
