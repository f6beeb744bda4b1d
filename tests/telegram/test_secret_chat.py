"""Secrets in the factory's chat: ``/secret NAME`` then the value (or inline, or for a project by
id), ``/secrets``; the message carrying a value is deleted first, the answer names the secret and
its length only, and the value is in no outbound message, escalation, event or log line. A text
reply to the question asking for secrets is deleted and answered with how to give them."""

from __future__ import annotations

import secrets

import pytest

from agents import services as agent_services
from agents.models import Escalation
from orchestrator.telegram import delivery
from projects import notifications, runs, services
from projects.models import OutboundMessage, Project, RunEvent
from secrets_meta import redaction
from secrets_meta.models import SecretAudit, SecretMeta, SecretValue
from secrets_meta.stores import get_store, project_scope
from tests.conftest import rendered_logs
from tests.telegram.conftest import ADA_TG, post_update

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_registry():
    redaction.forget_all()
    yield
    redaction.forget_all()


@pytest.fixture
def value() -> str:
    return "canary-" + secrets.token_urlsafe(18)


def project_of(user, name: str = "", description: str = "a web service that tells the weather") -> Project:
    project, _ = services.project_create(owner=user, description=description)
    if name:
        Project.objects.filter(id=project.id).update(name=name)
        project.refresh_from_db()
    return project


def waiting_for_secrets(user, botapi, missing: list[str], *, name: str = "Weather Bot"):
    """A project whose run waits for secrets; the question delivered to Ada's chat."""
    project = project_of(user, name)
    run = project.runs.get()
    runs.stage_claim(run_id=run.id, stage="architect", task_id=f"t-{run.id}")
    escalation = agent_services.escalation_raise(
        run_id=run.id,
        stage="deployer",
        reason="secrets_missing",
        question=f"Before it can go live, your project needs these secrets: {', '.join(missing)}.",
        context={"code": "secrets_missing", "output": {"missing": missing}},
    )
    event = RunEvent.objects.get(run=run, type="escalation.raised")
    delivery.message_send(message_id=notifications.run_event_notify(event.id).id)
    question = botapi.sent(botapi.factory, chat_id=ADA_TG)[-1]
    return project, escalation, question["message_id"]


def said(botapi) -> list[str]:
    return [m["text"] for m in botapi.sent(botapi.factory, chat_id=ADA_TG)]


def send(client, botapi, ada_tg, text: str, **kwargs) -> dict:
    update = botapi.make_update(botapi.factory, text, user=ada_tg, **kwargs)
    post_update(client, update)
    return update


def stored(project, name: str) -> str | None:
    return get_store().get(project_scope(project.id), name)


def nowhere_in_plain_text(value: str) -> None:
    assert not OutboundMessage.objects.filter(text__contains=value).exists()
    assert not Escalation.objects.filter(answer__contains=value).exists()
    assert value not in str(list(Escalation.objects.values_list("context", flat=True)))
    assert value not in str(list(RunEvent.objects.values_list("payload", flat=True)))
    assert not SecretAudit.objects.filter(detail__contains=value).exists()
    assert not Project.objects.filter(description__contains=value).exists()
    assert not SecretValue.objects.filter(ciphertext__contains=value).exists()


# --- giving a value -------------------------------------------------------------------------------
def test_secret_then_the_value_in_the_next_message_is_deleted_stored_and_answered_by_name_and_length(
    client, botapi, ada, ada_tg, value, django_capture_on_commit_callbacks
):
    project, escalation, _ = waiting_for_secrets(ada, botapi, ["API_KEY"])

    send(client, botapi, ada_tg, "/secret API_KEY")
    with rendered_logs() as logs, django_capture_on_commit_callbacks() as callbacks:
        update = send(client, botapi, ada_tg, value)

    prompt, answer = said(botapi)[-2:]
    assert prompt.startswith(f"Send me the value of API_KEY for project #{project.id} (Weather Bot)")
    assert answer == f"Stored API_KEY ({len(value)} characters) for Weather Bot."
    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    assert stored(project, "API_KEY") == value
    assert len(callbacks) >= 1  # escalations.secrets_provided, on commit
    escalation.refresh_from_db()
    assert (escalation.status, escalation.answer) == ("open", "")  # never answered with the text
    agent_services.escalation_values_provided(project_id=project.id)  # what the task does
    escalation.refresh_from_db()
    assert (escalation.status, escalation.action, escalation.answer) == ("answered", "provided", "")
    nowhere_in_plain_text(value)
    assert "secret_put" in logs.getvalue() and value not in logs.getvalue()


def test_an_inline_value_is_deleted_and_stored_and_the_missing_ones_are_listed(client, botapi, ada, ada_tg, value):
    project, _, _ = waiting_for_secrets(ada, botapi, ["API_KEY", "DB_URL"])
    SecretMeta.objects.create(project=project, key="DB_URL", kind="user", created_by="system")

    update = send(client, botapi, ada_tg, f"/secret API_KEY {value}")

    assert said(botapi)[-1] == f"Stored API_KEY ({len(value)} characters) for Weather Bot. Still needed: DB_URL."
    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    assert stored(project, "API_KEY") == value
    nowhere_in_plain_text(value)


def test_a_project_id_names_the_project(client, botapi, ada, ada_tg, value):
    older, newer = project_of(ada, "Older"), project_of(ada, "Newer")

    send(client, botapi, ada_tg, f"/secret {older.id} API_KEY")
    send(client, botapi, ada_tg, value)
    send(client, botapi, ada_tg, f"/secret #{newer.id} OTHER_KEY {value}x")

    assert stored(older, "API_KEY") == value and stored(newer, "OTHER_KEY") == value + "x"
    assert stored(newer, "API_KEY") is None
    assert said(botapi)[-1] == f"Stored OTHER_KEY ({len(value) + 1} characters) for Newer."


def test_without_a_project_the_one_waiting_for_that_name_gets_it_else_the_newest(client, botapi, ada, ada_tg, value):
    waiting, _, _ = waiting_for_secrets(ada, botapi, ["API_KEY"])
    newest = project_of(ada, "Newest")

    send(client, botapi, ada_tg, f"/secret API_KEY {value}")
    send(client, botapi, ada_tg, f"/secret UNRELATED_KEY {value}")

    assert stored(waiting, "API_KEY") == value and stored(newest, "API_KEY") is None
    assert stored(newest, "UNRELATED_KEY") == value


def test_secret_replying_to_the_question_is_for_that_questions_project(client, botapi, ada, ada_tg, value):
    first, _, question_id = waiting_for_secrets(ada, botapi, ["API_KEY"], name="First")
    waiting_for_secrets(ada, botapi, ["API_KEY"], name="Second")

    send(client, botapi, ada_tg, f"/secret API_KEY {value}", reply_to_message_id=question_id)

    assert stored(first, "API_KEY") == value and said(botapi)[-1].endswith("for First.")


# --- refusals ---------------------------------------------------------------------------------
def test_secret_alone_explains_how(client, botapi, ada, ada_tg):
    project_of(ada)

    send(client, botapi, ada_tg, "/secret")

    assert said(botapi)[-1].startswith("Send /secret NAME, then the value in the next message")
    assert botapi.deleted(botapi.factory, ADA_TG) == [] and not SecretMeta.objects.exists()


@pytest.mark.parametrize("text", ["/secret api_key {value}", "/secret API_KEY={value}", "/secret 1BAD {value}"])
def test_a_bad_name_is_refused_the_message_deleted_and_the_name_never_repeated(
    client, botapi, ada, ada_tg, value, text
):
    project_of(ada)

    update = send(client, botapi, ada_tg, text.format(value=value))

    assert said(botapi)[-1].startswith("That is not a secret name: use upper case letters")
    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    assert not SecretMeta.objects.exists()
    nowhere_in_plain_text(value)


def test_a_name_the_factory_sets_is_refused(client, botapi, ada, ada_tg, value):
    project_of(ada)

    send(client, botapi, ada_tg, f"/secret PATH {value}")

    assert said(botapi)[-1] == "PATH is set by the factory in every release; choose another name."
    assert not SecretMeta.objects.exists()
    nowhere_in_plain_text(value)


def test_an_empty_value_is_refused(client, botapi, ada, ada_tg):
    project_of(ada)

    send(client, botapi, ada_tg, "/secret API_KEY")
    update = send(client, botapi, ada_tg, "   ")

    assert said(botapi)[-1] == "The value of API_KEY is empty."
    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    assert not SecretMeta.objects.filter(filled=True).exists()


def test_a_bot_projects_token_is_sent_to_token_instead(client, botapi, ada, ada_tg):
    project_of(ada, description="a telegram bot that rolls dice")

    send(client, botapi, ada_tg, "/secret TELEGRAM_BOT_TOKEN")

    assert said(botapi)[-1].startswith("TELEGRAM_BOT_TOKEN is your bot's token: send it with /token")
    assert not SecretMeta.objects.exists()


def test_someone_elses_project_is_not_found(client, botapi, ada, ada_tg, other_user, value):
    theirs = project_of(other_user)

    send(client, botapi, ada_tg, f"/secret {theirs.id} API_KEY {value}")

    assert said(botapi)[-1].startswith(f"I can't find a project “{theirs.id}” of yours")
    assert not SecretMeta.objects.exists()
    nowhere_in_plain_text(value)


def test_with_no_project_at_all_the_person_is_told(client, botapi, ada, ada_tg, value):
    send(client, botapi, ada_tg, f"/secret API_KEY {value}")

    assert said(botapi)[-1].startswith("You have no projects yet")
    nowhere_in_plain_text(value)


def test_a_command_after_the_prompt_is_a_command_not_a_value(client, botapi, ada, ada_tg):
    project_of(ada)

    send(client, botapi, ada_tg, "/secret API_KEY")
    send(client, botapi, ada_tg, "/projects")

    assert said(botapi)[-1].startswith("Your projects:") and not SecretMeta.objects.exists()
    assert botapi.deleted(botapi.factory, ADA_TG) == []


# --- a text answer to the question asking for secrets ---------------------------------------------
def test_a_text_reply_to_the_secrets_question_is_deleted_not_stored_and_answered_with_how(
    client, botapi, ada, ada_tg, value
):
    project, escalation, question_id = waiting_for_secrets(ada, botapi, ["API_KEY", "DB_URL"])

    with rendered_logs() as logs:
        update = send(client, botapi, ada_tg, value, reply_to_message_id=question_id)

    answer = said(botapi)[-1]
    assert answer.startswith("Secrets are not given as a reply: I did not keep your message")
    assert "/secret API_KEY" in answer and "Still needed: API_KEY, DB_URL." in answer
    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    escalation.refresh_from_db()
    assert (escalation.status, escalation.answer) == ("open", "")
    assert not SecretMeta.objects.filter(filled=True).exists() and not Project.objects.exclude(id=project.id).exists()
    nowhere_in_plain_text(value)
    assert value not in logs.getvalue()


def test_answer_with_text_to_the_secrets_question_is_deleted_and_answered_with_how(client, botapi, ada, ada_tg, value):
    _, escalation, _ = waiting_for_secrets(ada, botapi, ["API_KEY"])

    update = send(client, botapi, ada_tg, f"/answer {value}")
    send(client, botapi, ada_tg, "/answer")

    with_text, without = said(botapi)[-2:]
    assert with_text.startswith("Secrets are not given as a reply") and "/secret API_KEY" in with_text
    assert without.startswith("That question is answered with the secrets themselves")
    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    escalation.refresh_from_db()
    assert escalation.status == "open"
    nowhere_in_plain_text(value)


# --- /secrets and /help ----------------------------------------------------------------------------
def test_secrets_lists_names_set_generated_and_missing_never_a_value(client, botapi, ada, ada_tg, value):
    from secrets_meta import services as secret_services

    project, _, _ = waiting_for_secrets(ada, botapi, ["API_KEY", "DB_URL"])
    secret_services.secret_put(project_id=project.id, key="API_KEY", value=value, actor="test")
    secret_services.secret_generate(project_id=project.id, key="SIGNING_KEY")
    SecretMeta.objects.create(project=project, key="DB_URL", kind="user", created_by="system")

    send(client, botapi, ada_tg, "/secrets")
    send(client, botapi, ada_tg, f"/secrets {project.id}")

    listing, by_id = said(botapi)[-2:]
    assert listing == by_id
    assert listing.splitlines() == [
        "Secrets of Weather Bot:",
        f"• API_KEY: set ({len(value)} characters)",
        "• DB_URL: missing: send it with /secret DB_URL",
        "• SIGNING_KEY: generated by the factory (43 characters)",
    ]
    nowhere_in_plain_text(value)


def test_secrets_of_a_project_without_any(client, botapi, ada, ada_tg):
    project_of(ada, "Plain")

    send(client, botapi, ada_tg, "/secrets")

    assert said(botapi)[-1] == "Plain has no secrets. Give one with /secret NAME."


def test_help_and_examples_tell_about_secrets_and_bots(client, botapi, ada, ada_tg):
    send(client, botapi, ada_tg, "/help")
    send(client, botapi, ada_tg, "/examples")

    help_text, examples = said(botapi)
    assert "/secret NAME" in help_text and "/secrets [project]" in help_text and "Telegram bots" in help_text
    assert "“a service that rolls a six-sided die” or “a telegram bot that rolls dice”" in examples
