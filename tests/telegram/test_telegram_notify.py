"""What people are told, and how it reaches them: OutboundMessage rows delivered through the real
pyTelegramBotAPI against the loopback Telegram, by the service directly and by a real Celery worker."""
from __future__ import annotations

import time

import pytest
from django.utils import timezone

from agents import services as agent_services
from agents.models import Escalation
from orchestrator import notify
from projects import events, notifications, people, runs, services
from projects.models import OutboundMessage, RunEvent, StageRun, TelegramAccount
from tests.telegram.conftest import ADA_TG, post_update

GREETER = "a web service that greets people by name"


def tell(ada, text="Hello", **kwargs) -> OutboundMessage:
    message = notifications.notify_person(user_id=ada.id, text=text, **kwargs)
    assert message is not None
    return message


def status_of(message: OutboundMessage) -> str:
    message.refresh_from_db()
    return message.status


# --- who hears what -----------------------------------------------------------------------
@pytest.mark.django_db
def test_a_message_is_queued_on_commit_only_for_a_reachable_chat(ada, other_user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        message = notifications.notify_person(user_id=ada.id, text="Hello")
        nobody = notifications.notify_person(user_id=other_user.id, text="Hello")  # no Telegram account

    assert message.status == "pending" and message.account.telegram_user_id == ADA_TG
    assert nobody is None
    assert len(callbacks) == 1
    TelegramAccount.objects.filter(user=ada).update(blocked_at=timezone.now())
    assert notifications.notify_person(user_id=ada.id, text="Hello") is None
    TelegramAccount.objects.filter(user=ada).update(blocked_at=None, chat_id=None)
    assert notifications.notify_person(user_id=ada.id, text="Hello") is None


@pytest.mark.django_db
def test_stage_transitions_are_told_and_heartbeats_are_not(ada):
    project, run = services.project_create(owner=ada, description=GREETER)
    told = {
        "run.started": events.event_record(run_id=run.id, type="run.started"),
        "stage.started": events.event_record(run_id=run.id, type="stage.started", stage="developer",
                                               payload={"iteration": 2, "attempt": 1}),
        "stage.failed": events.event_record(run_id=run.id, type="stage.failed", stage="deployer",
                                              payload={"message": "/health answered 500"}),
        "run.notified": events.event_record(run_id=run.id, type="run.notified", stage="notify",
                                              payload={"text": "Greeter is live.\nService running at http://x/"}),
    }
    quiet = [
        events.event_record(run_id=run.id, type=kind, stage="developer", payload={"message": "working"})
        for kind in ["run.queued", "stage.succeeded", "stage.waiting", "stage.requeued", "agent.progress",
                     "deploy.live", "run.succeeded"]
    ] + [events.event_record(run_id=run.id, type="stage.started", stage="notify")]

    texts = {kind: notifications.run_event_notify(event.id).text for kind, event in told.items()}

    assert [notifications.run_event_notify(event.id) for event in quiet] == [None] * len(quiet)
    assert texts["run.started"] == f"Run #{run.id} started: building “{GREETER}”."
    assert texts["stage.started"] == f"Project #{project.id} · run #{run.id}: writing the code (iteration 2)…"
    assert texts["stage.failed"].endswith("the deployer stage failed.\n/health answered 500")
    assert texts["run.notified"] == "Greeter is live.\nService running at http://x/"
    assert OutboundMessage.objects.filter(run=run).count() == 4


@pytest.mark.django_db
def test_telling_an_event_twice_sends_one_message(ada):
    _, run = services.project_create(owner=ada, description=GREETER)
    event = events.event_record(run_id=run.id, type="run.started")

    first = notifications.run_event_notify(event.id)
    second = notifications.run_event_notify(event.id)

    assert first.id == second.id and OutboundMessage.objects.count() == 1


@pytest.mark.django_db
def test_failed_tests_are_told_with_the_failing_test_names(ada):
    _, run = services.project_create(owner=ada, description=GREETER)
    StageRun.objects.filter(run=run, stage="tester", iteration=1).update(output={"report": {
        "passed": 3, "failed": 2, "errors": 0,
        "failing": [{"name": "tests.test_app::test_greet", "message": "assert 'Hi' == 'Hello'"},
                    {"name": "tests.test_app::test_health", "message": "500"}]}})
    event = events.event_record(run_id=run.id, type="tests.failed", stage="tester",
                                  payload={"iteration": 1, "next_iteration": 2, "message": "2 failed"})

    text = notifications.run_event_notify(event.id).text

    assert "tests failed on iteration 1 (2 failing: tests.test_app::test_greet, tests.test_app::test_health)" in text
    assert text.endswith("Back to the developer for iteration 2.")


@pytest.mark.django_db
def test_an_agents_question_is_quoted_and_escaped(ada):
    _, run = services.project_create(owner=ada, description=GREETER)
    event = events.event_record(run_id=run.id, type="agent.question", stage="developer",
                                  payload={"question": "Use <flask> or & django?"})

    message = notifications.run_event_notify(event.id)

    assert message.html
    assert "<blockquote>Use &lt;flask&gt; or &amp; django?</blockquote>" in message.text


# --- delivery, by the service ------------------------------------------------------------------
@pytest.mark.django_db
def test_a_message_is_sent_once(telegram, ada):
    message = tell(ada, "Run #1 started")

    first = notify.message_send(message_id=message.id)
    again = notify.message_send(message_id=message.id)

    assert (first.status, first.retry_in, again.status) == ("sent", None, "sent")
    message.refresh_from_db()
    assert message.telegram_message_id == telegram.sent[0].message_id and message.attempts == 1
    assert telegram.texts_to(ADA_TG) == ["Run #1 started"]


@pytest.mark.django_db
def test_a_429_asks_to_retry_after_telegrams_retry_after(telegram, ada):
    telegram.rate_limit(retry_after=7)
    message = tell(ada)

    outcome = notify.message_send(message_id=message.id)

    assert (outcome.status, outcome.retry_in) == ("pending", 7.0)
    message.refresh_from_db()
    assert message.attempts == 1 and "429 Too Many Requests: retry after 7" in message.error
    assert notify.message_send(message_id=message.id).status == "sent"


@pytest.mark.django_db
def test_a_403_marks_the_message_and_the_account_blocked_without_retry(telegram, ada):
    telegram.forbid()
    message, later = tell(ada, "first"), tell(ada, "second")

    outcome = notify.message_send(message_id=message.id)

    assert (outcome.status, outcome.retry_in) == ("blocked", None)
    assert status_of(message) == "blocked" and status_of(later) == "blocked"
    account = TelegramAccount.objects.get(user=ada)
    assert account.blocked_at is not None and "bot was blocked by the user" in account.blocked_reason
    assert notifications.notify_person(user_id=ada.id, text="third") is None
    assert notify.message_send(message_id=later.id).status == "blocked"
    assert len(telegram.calls_of("sendMessage")) == 1


@pytest.mark.django_db
def test_a_deleted_chat_is_recorded_as_blocked(telegram, ada):
    telegram.fail("sendMessage", 400, "Bad Request: chat not found")
    message = tell(ada)

    assert notify.message_send(message_id=message.id).status == "blocked"
    assert TelegramAccount.objects.get(user=ada).blocked_at is not None


@pytest.mark.django_db
def test_rejected_formatting_falls_back_to_plain_text_once(telegram, ada):
    # The stand-in checks HTML the way Telegram does: an unknown tag is refused.
    message = tell(ada, "<b>Run #3</b> asks: use <flask>? &amp; then", html=True)

    outcome = notify.message_send(message_id=message.id)

    assert outcome.status == "sent"
    rejected, accepted = telegram.calls_of("sendMessage")
    assert rejected.status == 400 and rejected.params["parse_mode"] == "HTML"
    assert accepted.status == 200 and "parse_mode" not in accepted.params
    assert telegram.texts_to(ADA_TG) == ["Run #3 asks: use ? & then"]


@pytest.mark.django_db
def test_a_scripted_formatting_rejection_resends_the_same_text_plain(telegram, ada):
    telegram.reject_entities()
    message = tell(ada, "<b>Greeter</b> is live &lt;3", html=True)

    assert notify.message_send(message_id=message.id).status == "sent"
    assert telegram.texts_to(ADA_TG) == ["Greeter is live <3"]


@pytest.mark.django_db
def test_transient_errors_retry_with_backoff_five_times_then_fail(telegram, ada):
    telegram.server_error(times=100)
    message = tell(ada)

    delays = [notify.message_send(message_id=message.id).retry_in for _ in range(6)]

    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, None]
    message.refresh_from_db()
    assert message.status == "failed" and message.attempts == 6
    assert "gave up after 6 attempts" in message.error


@pytest.mark.django_db
def test_an_unreachable_telegram_is_transient_and_the_error_does_not_show_the_token(settings, telegram, ada):
    settings.TELEGRAM_API_URL = "http://127.0.0.1:9/bot{0}/{1}"
    message = tell(ada)

    outcome = notify.message_send(message_id=message.id)

    assert outcome.status == "pending" and outcome.retry_in == 2.0
    message.refresh_from_db()
    assert "could not be reached" in message.error and telegram.token not in message.error
    assert telegram.token.split(":")[1] not in outcome.detail


@pytest.mark.django_db
def test_without_a_bot_token_a_message_fails_with_the_reason(settings, ada):
    settings.TELEGRAM_BOT_TOKEN = ""
    message = tell(ada)

    assert notify.message_send(message_id=message.id).status == "failed"
    message.refresh_from_db()
    assert "TELEGRAM_BOT_TOKEN is not set" in message.error


@pytest.mark.django_db
def test_a_newer_message_waits_for_an_older_one_to_the_same_chat(telegram, ada):
    older, newer = tell(ada, "first"), tell(ada, "second")

    waiting = notify.message_send(message_id=newer.id)
    notify.message_send(message_id=older.id)
    notify.message_send(message_id=newer.id)

    assert (waiting.status, waiting.retry_in) == ("pending", notify.ORDER_RETRY_SECONDS)
    assert telegram.texts_to(ADA_TG) == ["first", "second"]


# --- a question, its message, and the reply that answers it -------------------------------------
@pytest.mark.django_db
def test_a_reply_to_the_question_message_answers_the_escalation(client, telegram, ada, ada_tg):
    _, run = services.project_create(owner=ada, description=GREETER)
    runs.stage_claim(run_id=run.id, stage="architect", task_id="t-1")
    escalation = agent_services.escalation_raise(run_id=run.id, stage="developer", reason="agent_blocked",
                                                 question="Which greeting: <Hello> or Hi?")
    event = RunEvent.objects.get(run=run, type="escalation.raised")
    message = notifications.run_event_notify(event.id)
    assert message.escalation_id == escalation.id and message.html

    assert notify.message_send(message_id=message.id).status == "sent"
    question = telegram.sent[-1]
    assert "needs you" in question.text and "Which greeting: &lt;Hello&gt; or Hi?" in question.text
    escalation.refresh_from_db()
    assert escalation.telegram_message_id == question.message_id

    post_update(client, telegram.make_update(from_user=ada_tg, text="Say Hello", reply_to_message_id=question.message_id))

    escalation.refresh_from_db()
    assert (escalation.status, escalation.action, escalation.answer) == ("answered", "guidance", "Say Hello")
    assert escalation.answered_by == ada
    assert telegram.texts_to(ADA_TG)[-1] == f"Thanks. Run #{run.id} goes on with your answer."


@pytest.mark.django_db
def test_budget_command_raises_the_budget_of_the_waiting_run(client, telegram, ada, ada_tg):
    _, run = services.project_create(owner=ada, description=GREETER)
    runs.stage_claim(run_id=run.id, stage="architect", task_id="t-1")
    escalation = agent_services.escalation_raise(run_id=run.id, stage="developer", reason="budget",
                                                 question="The run budget is spent.")

    post_update(client, telegram.make_update(from_user=ada_tg, text="/budget $2.50"))
    post_update(client, telegram.make_update(from_user=ada_tg, text="/budget lots"))

    escalation.refresh_from_db()
    assert (escalation.action, escalation.budget_increase_usd) == ("raise_budget", 2.5)
    done, _ = telegram.texts_to(ADA_TG)
    assert done == f"Run #{run.id}: budget raised by $2.50. It goes on."


# --- delivery, by a real Celery worker -----------------------------------------------------------
def wait_status(message: OutboundMessage, status: str, timeout: float, procs) -> None:
    deadline = time.monotonic() + timeout
    while status_of(message) != status:
        assert time.monotonic() < deadline, f"message is {message.status}: {message.error}\n{procs.logs()}"
        time.sleep(0.1)


@pytest.mark.e2e
def test_the_worker_retries_a_429_after_retry_after(celery_procs, telegram, user):
    people.account_link(user=user, telegram_user_id=ADA_TG, chat_id=ADA_TG)
    telegram.rate_limit(retry_after=2)
    celery_procs.worker(**telegram.worker_env())

    message = tell(user, "Run #1 started")
    wait_status(message, "sent", 30, celery_procs)

    limited, delivered = telegram.calls_of("sendMessage")
    assert (limited.status, delivered.status) == (429, 200)
    assert delivered.at - limited.at >= 1.9  # Telegram's retry_after was honoured, by a countdown
    assert message.attempts == 2 and telegram.texts_to(ADA_TG) == ["Run #1 started"]


@pytest.mark.e2e
def test_the_worker_records_a_blocked_chat_and_does_not_retry(celery_procs, telegram, user):
    people.account_link(user=user, telegram_user_id=ADA_TG, chat_id=ADA_TG)
    telegram.block(ADA_TG)
    celery_procs.worker(**telegram.worker_env())

    message = tell(user, "Run #1 started")
    wait_status(message, "blocked", 30, celery_procs)
    time.sleep(2)  # room for a retry that must not come

    assert [c.status for c in telegram.calls_of("sendMessage")] == [403]
    account = TelegramAccount.objects.get(user=user)
    assert account.blocked_at is not None and account.blocked_reason.endswith("bot was blocked by the user")
    assert Escalation.objects.count() == 0 and message.attempts == 1


def test_a_message_whose_delivery_task_was_lost_is_sent_by_the_sweep(ada, celery_procs, telegram):
    from datetime import timedelta

    from config.celery import app

    lost = tell(ada, "Lost in transport")
    app.control.purge()  # its delivery task is lost before any worker saw it
    assert notifications.messages_requeue_stale(older_than_seconds=300) == []  # too young to call lost
    OutboundMessage.objects.filter(id=lost.id).update(created_at=timezone.now() - timedelta(minutes=10))
    assert notifications.messages_requeue_stale(older_than_seconds=300) == [lost.id]
    celery_procs.worker(**telegram.worker_env())
    deadline = time.monotonic() + 30
    while status_of(lost) != "sent":
        assert time.monotonic() < deadline, celery_procs.logs()
        time.sleep(0.1)
    assert telegram.texts_to(ada.telegram.chat_id).count("Lost in transport") == 1


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_of_one_message_at_once_send_it_once(ada, telegram):
    """The stale sweep can give a message a second delivery task while its first is still at it."""
    import threading

    from django.db import connection

    message = tell(ada, "Greeter is live.")
    holding, release = threading.Event(), threading.Event()

    def first_delivery() -> None:  # another process, on its own connection, in the middle of sending
        try:
            with notifications.message_delivery(message_id=message.id) as ours:
                assert ours
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    other = threading.Thread(target=first_delivery)
    other.start()
    assert holding.wait(10)
    outcome = notify.message_send(message_id=message.id)
    assert (outcome.status, outcome.retry_in, outcome.detail) == ("pending", None, "another delivery is on it")
    assert telegram.calls_of("sendMessage") == [] and status_of(message) == "pending"
    release.set()
    other.join(10)
    assert notify.message_send(message_id=message.id).status == "sent"
    assert notify.message_send(message_id=message.id).status == "sent"  # a late duplicate is a no-op
    assert telegram.texts_to(ADA_TG) == ["Greeter is live."]
