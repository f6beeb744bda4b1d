"""The bot through the real pyTelegramBotAPI, against the loopback Telegram: webhook and long polling.

``db`` keeps ``on_commit`` from enqueueing the pipeline: these tests are about what the bot does
with a message, and what it answers.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone
from structlog.testing import capture_logs

from projects import deployments, people, runs, services
from projects.models import Deployment, Invite, PipelineRun, Project, TelegramAccount
from tests.fakes.telegram_server import user as tg_user
from tests.telegram.conftest import ADA_TG, BOB_TG, STRANGER_TG, deliver_outbox, post_update

pytestmark = pytest.mark.django_db

GREETER = "a web service that greets people by name"


def only_reply(telegram, chat_id: int) -> str:
    texts = telegram.texts_to(chat_id)
    assert len(texts) == 1, texts
    return texts[0]


# --- creating a project -------------------------------------------------------------------
def test_a_linked_person_creates_a_project_by_plain_message_through_the_webhook(client, telegram, ada, ada_tg):
    response = post_update(client, telegram.make_update(from_user=ada_tg, text=GREETER))

    assert response.status_code == 200 and response.json() == {"ok": True, "handled": True}
    project = Project.objects.get(owner=ada)
    run = PipelineRun.objects.get(project=project)
    assert project.description == GREETER and run.status == "queued"
    reply = only_reply(telegram, ADA_TG)
    assert f"project #{project.id}, run #{run.id} is queued" in reply


def test_new_command_creates_a_project_and_without_a_description_says_what_is_missing(client, telegram, ada, ada_tg):
    post_update(client, telegram.make_update(from_user=ada_tg, text="/new a bot that tells the weather"))
    post_update(client, telegram.make_update(from_user=ada_tg, text="/new"))

    assert list(Project.objects.values_list("description", flat=True)) == ["a bot that tells the weather"]
    first, second = telegram.texts_to(ADA_TG)
    assert "is queued" in first
    assert second.startswith("Describe the service you want")


def test_a_linked_person_creates_a_project_through_runbot_polling(telegram, ada, ada_tg):
    telegram.say(ada_tg, GREETER)

    call_command("runbot", "--once", "--timeout", "1")
    deliver_outbox()

    run = PipelineRun.objects.get(project__owner=ada)
    assert f"run #{run.id} is queued" in only_reply(telegram, ADA_TG)
    assert telegram.pending_updates == 0  # confirmed: a restarted bot does not handle it again
    call_command("runbot", "--once", "--timeout", "1")
    assert Project.objects.count() == 1


def test_runbot_refuses_to_poll_while_a_webhook_is_set(telegram, ada, ada_tg):
    from django.core.management.base import CommandError

    call_command("runbot", "--set-webhook", "https://factory.example/telegram/webhook/")
    assert telegram.webhook == {
        "url": "https://factory.example/telegram/webhook/",
        "secret_token": "webhook-secret-for-tests",
    }
    telegram.say(ada_tg, GREETER)
    with pytest.raises(CommandError, match="webhook"):
        call_command("runbot", "--once", "--timeout", "1")
    call_command("runbot", "--once", "--timeout", "1", "--delete-webhook")
    assert Project.objects.count() == 1


# --- refusals -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["/new a web service that greets people by name", GREETER, "/status", "/start"])
def test_an_unknown_user_is_refused_with_their_id_and_nothing_changes(client, telegram, stranger_tg, text):
    response = post_update(client, telegram.make_update(from_user=stranger_tg, text=text))

    assert response.status_code == 200
    reply = only_reply(telegram, STRANGER_TG)
    assert "I only work for people I know" in reply and f"Your Telegram id is {STRANGER_TG}" in reply
    assert not Project.objects.exists()
    assert not TelegramAccount.objects.exists()


def test_a_bad_invite_code_is_refused_and_changes_nothing(client, telegram, stranger_tg):
    users_before = get_user_model().objects.count()
    for code in ["not-a-real-code-123", "x", "<script>"]:
        post_update(client, telegram.make_update(from_user=stranger_tg, text=f"/start {code}"))

    assert all("invite code is not valid" in t for t in telegram.texts_to(STRANGER_TG))
    assert len(telegram.texts_to(STRANGER_TG)) == 3
    assert not TelegramAccount.objects.exists()
    assert get_user_model().objects.count() == users_before


def test_a_used_invite_is_refused_and_the_second_person_stays_out(client, telegram, stranger_tg):
    invite = people.invite_create()
    post_update(client, telegram.make_update(from_user=stranger_tg, text=f"/start {invite.code}"))
    other = tg_user(BOB_TG, first_name="Bob", username="bob_b")

    post_update(client, telegram.make_update(from_user=other, text=f"/start {invite.code}"))

    assert "already been used" in only_reply(telegram, BOB_TG)
    assert list(TelegramAccount.objects.values_list("telegram_user_id", flat=True)) == [STRANGER_TG]
    invite.refresh_from_db()
    assert invite.redeemed_by == STRANGER_TG


def test_an_expired_invite_is_refused(client, telegram, stranger_tg):
    invite = people.invite_create()
    Invite.objects.filter(id=invite.id).update(expires_at=timezone.now() - timedelta(seconds=1))

    post_update(client, telegram.make_update(from_user=stranger_tg, text=f"/start {invite.code}"))

    assert "expired" in only_reply(telegram, STRANGER_TG)
    assert not TelegramAccount.objects.exists()
    assert Invite.objects.get(id=invite.id).redeemed_at is None


@pytest.mark.parametrize("secret", [None, "", "wrong-secret", "webhook-secret-for-tests-"])
def test_a_wrong_webhook_secret_is_403_and_nothing_is_processed(client, telegram, ada, ada_tg, secret):
    response = post_update(client, telegram.make_update(from_user=ada_tg, text=GREETER), secret=secret)

    assert response.status_code == 403
    assert not Project.objects.exists()
    assert telegram.calls == []


def test_without_a_configured_secret_the_webhook_refuses_everything(client, telegram, ada, ada_tg, settings):
    settings.TELEGRAM_WEBHOOK_SECRET = ""

    response = post_update(client, telegram.make_update(from_user=ada_tg, text=GREETER), secret="")

    assert response.status_code == 403
    assert not Project.objects.exists()


def test_the_webhook_takes_posts_only(client, telegram):
    assert (
        client.get("/telegram/webhook/", HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN="webhook-secret-for-tests").status_code
        == 405
    )


MALFORMED = [
    {
        "update_id": "1",
        "message": {
            "message_id": 1,
            "date": 0,
            "chat": {"id": ADA_TG, "type": "private"},
            "from": {"id": ADA_TG, "is_bot": False, "first_name": "Ada"},
            "text": GREETER,
        },
    },
    {"update_id": 1, "message": {"message_id": 1, "date": 0, "from": {"id": ADA_TG, "is_bot": False}, "text": GREETER}},
    {
        "update_id": 2,
        "message": {
            "message_id": 2,
            "date": 0,
            "chat": {"id": ADA_TG, "type": "private"},
            "from": {"id": ADA_TG, "is_bot": False, "first_name": "Ada"},
            "text": 12345,
        },
    },
    {
        "update_id": 3,
        "message": {
            "message_id": 3,
            "date": 0,
            "chat": {"id": ADA_TG, "type": "spaceship"},
            "from": {"id": ADA_TG, "is_bot": False, "first_name": "Ada"},
            "text": GREETER,
        },
    },
    {"message": {"text": GREETER}},
    [1, 2, 3],
    "hello",
]


@pytest.mark.parametrize("update", MALFORMED)
def test_a_malformed_update_is_ignored_with_a_log_line(client, telegram, ada, update):
    with capture_logs() as logs:
        response = post_update(client, update)

    assert response.status_code == 200 and response.json()["handled"] is False
    assert any(entry["event"] == "telegram_update_rejected" for entry in logs)
    assert not Project.objects.exists()
    assert telegram.calls == []


def test_a_body_that_is_not_json_is_400(client, telegram, ada):
    response = post_update(client, None, raw=b"{not json")

    assert response.status_code == 400
    assert not Project.objects.exists()


def test_malformed_updates_from_polling_are_skipped_and_the_good_ones_handled(telegram, ada, ada_tg):
    telegram.push({"update_id": 5, "message": {"text": "no chat, no sender"}})
    telegram.say(ada_tg, GREETER)

    with capture_logs() as logs:
        call_command("runbot", "--once", "--timeout", "1")

    assert any(entry["event"] == "telegram_update_rejected" for entry in logs)
    assert Project.objects.filter(owner=ada).count() == 1
    assert telegram.pending_updates == 0


def test_updates_that_are_not_messages_and_group_chats_are_ignored(client, telegram, ada, ada_tg):
    edited = {
        "update_id": 9,
        "edited_message": {"message_id": 1, "date": 0, "text": "x", "chat": {"id": ADA_TG, "type": "private"}},
    }
    group = telegram.make_update(
        from_user=ada_tg, text=GREETER, chat={"id": -100500, "type": "group", "title": "friends"}
    )

    assert post_update(client, edited).json()["handled"] is False
    assert post_update(client, group).status_code == 200
    assert not Project.objects.exists()
    assert telegram.calls == []


# --- invites ------------------------------------------------------------------------------
def test_an_invite_links_a_new_user_who_can_then_create_projects(client, telegram, stranger_tg):
    invite = people.invite_create()

    post_update(client, telegram.make_update(from_user=stranger_tg, text=f"/start {invite.code}"))
    post_update(client, telegram.make_update(from_user=stranger_tg, text=GREETER))

    account = TelegramAccount.objects.select_related("user").get(telegram_user_id=STRANGER_TG)
    assert account.user.username == f"tg-{STRANGER_TG}" and not account.user.has_usable_password()
    assert account.chat_id == STRANGER_TG and account.username == "eve"
    assert Invite.objects.get(id=invite.id).redeemed_by == STRANGER_TG
    welcome, created = telegram.texts_to(STRANGER_TG)
    assert welcome.startswith(f"Welcome! You're in as tg-{STRANGER_TG}")
    assert Project.objects.get().owner == account.user and "is queued" in created


def test_an_invite_for_a_person_links_that_person(client, telegram, stranger_tg, other_user):
    invite = people.invite_create(user=other_user)

    post_update(client, telegram.make_update(from_user=stranger_tg, text=f"/start {invite.code}"))

    assert TelegramAccount.objects.get(telegram_user_id=STRANGER_TG).user == other_user
    assert "You're in as bob" in only_reply(telegram, STRANGER_TG)


def test_a_known_person_starting_with_a_code_keeps_the_invite_unused(client, telegram, ada, ada_tg):
    invite = people.invite_create()

    post_update(client, telegram.make_update(from_user=ada_tg, text=f"/start {invite.code}"))

    assert "Welcome back, ada. The invite code was not used." in only_reply(telegram, ADA_TG)
    assert Invite.objects.get(id=invite.id).redeemed_at is None


# --- reading --------------------------------------------------------------------------------
class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b'{"status": "ok"}'
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def live_release():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_status_shows_the_run_its_stage_cost_live_url_and_health(client, telegram, ada, ada_tg, live_release):
    project, run = services.project_create(owner=ada, description=GREETER)
    claim = runs.stage_claim(run_id=run.id, stage="architect", task_id="t-1")
    PipelineRun.objects.filter(id=run.id).update(cost_usd="0.42")
    deployment = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha="c" * 40)
    # The probe asks the release on its own port (the stand-in's here), not the URL people get.
    Deployment.objects.filter(id=deployment.id).update(port=int(live_release.rstrip("/").rsplit(":", 1)[1]))
    deployments.deployment_go_live(deployment_id=deployment.id, url=live_release)
    assert claim.state == runs.ClaimState.CLAIMED

    post_update(client, telegram.make_update(from_user=ada_tg, text=f"/status {project.id}"))

    reply = only_reply(telegram, ADA_TG)
    assert f"Run #{run.id}: running, stage architect" in reply
    assert "Cost so far: $0.42" in reply
    assert f"Live: {live_release}" in reply and reply.endswith("healthy")


def test_status_of_someone_elses_project_is_not_found_and_nothing_leaks(client, telegram, ada, ada_tg, other_user):
    theirs, _ = services.project_create(owner=other_user, description="a secret weather bot for bob")
    Project.objects.filter(id=theirs.id).update(slug="bobs-weather", name="Bob's Weather")

    post_update(client, telegram.make_update(from_user=ada_tg, text=f"/status {theirs.id}"))
    post_update(client, telegram.make_update(from_user=ada_tg, text="/status bobs-weather"))
    post_update(client, telegram.make_update(from_user=ada_tg, text=f"/cancel {theirs.id}"))

    replies = telegram.texts_to(ADA_TG)
    assert len(replies) == 3
    assert all("can't find a project" in r for r in replies)
    assert not any("secret weather" in r or "Bob's Weather" in r for r in replies)
    assert PipelineRun.objects.get(project=theirs).status == "queued"


def test_status_of_a_project_that_does_not_exist_is_not_found(client, telegram, ada, ada_tg):
    for ref in ["424242", "9" * 30, "no-such-slug", "#12"]:
        post_update(client, telegram.make_update(from_user=ada_tg, text=f"/status {ref}"))

    assert [r.startswith("I can't find a project") for r in telegram.texts_to(ADA_TG)] == [True] * 4


def test_projects_lists_only_the_persons_own(client, telegram, ada, ada_tg, other_user):
    mine, _ = services.project_create(owner=ada, description=GREETER)
    services.project_create(owner=other_user, description="a secret weather bot for bob")

    post_update(client, telegram.make_update(from_user=ada_tg, text="/projects"))

    reply = only_reply(telegram, ADA_TG)
    assert reply.startswith("Your projects:") and f"#{mine.id} (not planned yet) – queued" in reply
    assert len(reply.splitlines()) == 2 and "secret weather" not in reply


def test_cancel_stops_the_persons_running_run(client, telegram, ada, ada_tg):
    project, run = services.project_create(owner=ada, description=GREETER)

    post_update(client, telegram.make_update(from_user=ada_tg, text="/cancel"))

    assert PipelineRun.objects.get(id=run.id).status == "cancelled"
    assert f"Run #{run.id} of {project} is cancelled" in only_reply(telegram, ADA_TG)


def test_help_unknown_commands_and_other_content(client, telegram, ada, ada_tg):
    post_update(client, telegram.make_update(from_user=ada_tg, text="/help"))
    post_update(client, telegram.make_update(from_user=ada_tg, text="/frobnicate"))
    post_update(
        client,
        telegram.make_update(
            from_user=ada_tg,
            text=None,
            extra={
                "sticker": {
                    "file_id": "s1",
                    "file_unique_id": "u1",
                    "type": "regular",
                    "width": 512,
                    "height": 512,
                    "is_animated": False,
                    "is_video": False,
                }
            },
        ),
    )

    help_text, unknown, sticker = telegram.texts_to(ADA_TG)
    assert "/status [project]" in help_text
    assert unknown.startswith("I don't know that command.")
    assert sticker == "I understand text messages only."
    assert not Project.objects.exists()


def test_replying_to_a_message_that_is_no_question_does_not_start_a_project(client, telegram, ada, ada_tg):
    post_update(client, telegram.make_update(from_user=ada_tg, text="/help"))
    help_message = telegram.sent[0].message_id

    post_update(client, telegram.make_update(from_user=ada_tg, text="thanks!", reply_to_message_id=help_message))
    post_update(client, telegram.make_update(from_user=ada_tg, text="/answer use flask"))

    _, not_a_question, nothing_open = telegram.texts_to(ADA_TG)
    assert not_a_question.startswith("That message is not a question")
    assert nothing_open == "Nothing is waiting for your answer right now."
    assert not Project.objects.exists()


def test_a_person_writing_again_updates_their_chat_and_lifts_a_block(client, telegram, ada, ada_tg):
    TelegramAccount.objects.filter(user=ada).update(chat_id=None, blocked_at=timezone.now(), blocked_reason="403")

    post_update(client, telegram.make_update(from_user=ada_tg, text="/help"))

    account = TelegramAccount.objects.get(user=ada)
    assert (account.chat_id, account.blocked_at, account.blocked_reason) == (ADA_TG, None, "")


# --- what people really send ----------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["a web service that greets\x00 people", "/new greets \x00 people", "/status \x00", "/answer use\x00flask"]
)
def test_a_message_with_a_nul_character_is_refused_with_a_clear_answer_and_changes_nothing(
    client, telegram, ada, ada_tg, text
):
    with capture_logs() as logs:
        response = post_update(client, telegram.make_update(from_user=ada_tg, text=text))

    assert response.status_code == 200 and response.json()["handled"] is True
    assert only_reply(telegram, ADA_TG).startswith("I can't read that message: it contains a character I can't store")
    assert not Project.objects.exists()
    assert not any(entry["event"] == "telegram_handler_crashed" for entry in logs)


def test_text_that_is_not_unicode_is_refused_like_a_nul(client, telegram, ada, ada_tg):
    update = telegram.make_update(from_user=ada_tg, text="PLACEHOLDER")
    body = json.dumps(update).replace("PLACEHOLDER", "greets \\ud800 people").encode()  # a lone surrogate

    post_update(client, None, raw=body)

    assert only_reply(telegram, ADA_TG).startswith("I can't read that message")
    assert not Project.objects.exists()


def test_a_sender_name_postgresql_cannot_store_rejects_the_update_without_a_crash(client, telegram, ada):
    sender = tg_user(ADA_TG, first_name="Ada", username="ada\x00")

    with capture_logs() as logs:
        response = post_update(client, telegram.make_update(from_user=sender, text=GREETER))

    assert response.status_code == 200 and response.json()["handled"] is False
    assert any(entry["event"] == "telegram_update_rejected" for entry in logs)
    assert not Project.objects.exists() and telegram.calls == []


@pytest.mark.parametrize("command", ["/NEW", "/New", "/new@factory_test_bot", "/NEW@Factory_Test_Bot"])
def test_commands_are_case_insensitive_and_may_name_the_bot(client, telegram, ada, ada_tg, command):
    post_update(client, telegram.make_update(from_user=ada_tg, text=f"{command} {GREETER}"))
    post_update(client, telegram.make_update(from_user=ada_tg, text=command.replace("ew", "elp").replace("EW", "ELP")))
    post_update(client, telegram.make_update(from_user=ada_tg, text="/Status"))

    project = Project.objects.get(owner=ada)
    assert project.description == GREETER
    created, help_text, status = telegram.texts_to(ADA_TG)
    assert "is queued" in created and "/status [project]" in help_text
    assert status.startswith(f"Project (#{project.id})")


def test_a_person_starting_projects_too_fast_is_told_to_wait_and_nothing_more_is_created(
    client, telegram, ada, ada_tg, settings
):
    settings.PROJECT_CREATE_LIMIT, settings.PROJECT_CREATE_WINDOW_SECONDS = 2, 600

    for _ in range(4):
        post_update(client, telegram.make_update(from_user=ada_tg, text=GREETER))

    assert Project.objects.filter(owner=ada).count() == 2
    first, second, third, fourth = telegram.texts_to(ADA_TG)
    assert "is queued" in first and "is queued" in second
    assert (
        third
        == fourth
        == (
            "You have started 2 projects in the last 10 minutes; the limit is 2. "
            "Please wait a little before starting another."
        )
    )


def test_an_answer_that_meets_a_429_is_kept_and_sent_when_telegram_allows(client, telegram, ada, ada_tg):
    from projects.models import OutboundMessage

    telegram.rate_limit(retry_after=3)

    post_update(client, telegram.make_update(from_user=ada_tg, text="/help"))

    answer = OutboundMessage.objects.get(chat_id=ADA_TG)
    assert (answer.status, answer.attempts) == ("pending", 1) and "429" in answer.error
    assert telegram.texts_to(ADA_TG) == []
    OutboundMessage.objects.filter(id=answer.id).update(next_attempt_at=timezone.now())  # 3 s later
    deliver_outbox()
    assert "/status [project]" in only_reply(telegram, ADA_TG)
    assert [c.status for c in telegram.calls_of("sendMessage")] == [429, 200]


def test_examples_lists_what_the_scripted_architect_builds_once(client, telegram, ada, ada_tg):
    post_update(client, telegram.make_update(from_user=ada_tg, text="/examples"))

    reply = only_reply(telegram, ADA_TG)
    assert reply.startswith("I can build web services and Telegram bots that do these things")
    assert "greets people by name: “a web service that greets people by name” or “a telegram bot" in reply
    assert reply.count("greets people by name:") == 1 and "/new --own-bot" in reply
    assert "LLM" not in reply and "admin" not in reply and len(reply) < 1200


def test_a_strangers_refusal_goes_through_the_outbox_too(client, telegram, stranger_tg):
    from projects.models import OutboundMessage

    post_update(client, telegram.make_update(from_user=stranger_tg, text="hello"))

    refusal = OutboundMessage.objects.get()
    assert (refusal.account, refusal.chat_id, refusal.status) == (None, STRANGER_TG, "sent")
    assert refusal.telegram_message_id == telegram.sent[0].message_id
