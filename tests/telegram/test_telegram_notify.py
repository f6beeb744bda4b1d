"""What people are told, and how it reaches them: OutboundMessage rows delivered through the real
pyTelegramBotAPI against the loopback Telegram, by the service directly and by a real Celery worker."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from structlog.testing import capture_logs

from agents import services as agent_services
from agents.models import Escalation
from orchestrator import pipeline
from orchestrator.telegram import delivery
from projects import events, notifications, people, runs, services
from projects.models import OutboundMessage, RunEvent, StageRun, TelegramAccount
from tests.telegram.conftest import ADA_TG, post_update

GREETER = "a web service that greets people by name"


def tell(ada, text="Hello", **kwargs) -> OutboundMessage:
    message = notifications.notify_person(user_id=ada.id, text=text, **kwargs)
    assert message is not None
    return message


def due_now(message: OutboundMessage) -> None:
    """The retry's time has come (instead of waiting for it)."""
    OutboundMessage.objects.filter(id=message.id).update(next_attempt_at=None)


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
        "stage.started": events.event_record(
            run_id=run.id, type="stage.started", stage="developer", payload={"iteration": 2, "attempt": 1}
        ),
        "run.notified": events.event_record(
            run_id=run.id,
            type="run.notified",
            stage="notify",
            payload={"text": "Greeter is live.\nService running at http://x/"},
        ),
    }
    quiet = [
        events.event_record(run_id=run.id, type=kind, stage="developer", payload={"message": "working"})
        for kind in [
            "run.queued",
            "stage.succeeded",
            "stage.waiting",
            "stage.requeued",
            "agent.progress",
            "deploy.live",
            "run.succeeded",
            "stage.failed",
        ]
    ] + [events.event_record(run_id=run.id, type="stage.started", stage="notify")]

    texts = {kind: notifications.run_event_notify(event.id).text for kind, event in told.items()}

    assert [notifications.run_event_notify(event.id) for event in quiet] == [None] * len(quiet)
    assert texts["run.started"] == f"Run #{run.id} started: building “{GREETER}”."
    assert texts["stage.started"] == f"Project #{project.id} · run #{run.id}: writing the code (iteration 2)…"
    assert texts["run.notified"] == "Greeter is live.\nService running at http://x/"
    assert OutboundMessage.objects.filter(run=run).count() == 3


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
    StageRun.objects.filter(run=run, stage="tester", iteration=1).update(
        output={
            "report": {
                "passed": 3,
                "failed": 2,
                "errors": 0,
                "failing": [
                    {"name": "tests.test_app::test_greet", "message": "assert 'Hi' == 'Hello'"},
                    {"name": "tests.test_app::test_health", "message": "500"},
                ],
            }
        }
    )
    event = events.event_record(
        run_id=run.id,
        type="tests.failed",
        stage="tester",
        payload={"iteration": 1, "next_iteration": 2, "message": "2 failed"},
    )

    text = notifications.run_event_notify(event.id).text

    assert "tests failed on iteration 1 (2 failing: tests.test_app::test_greet, tests.test_app::test_health)" in text
    assert text.endswith("Back to the developer for iteration 2.")


@pytest.mark.django_db
def test_an_agents_question_is_quoted_and_escaped(ada):
    _, run = services.project_create(owner=ada, description=GREETER)
    event = events.event_record(
        run_id=run.id, type="agent.question", stage="developer", payload={"question": "Use <flask> or & django?"}
    )

    message = notifications.run_event_notify(event.id)

    assert message.html
    assert "<blockquote>Use &lt;flask&gt; or &amp; django?</blockquote>" in message.text


@pytest.mark.django_db
def test_failed_tests_that_wait_for_a_person_are_told_once_by_the_question(ada):
    _, run = services.project_create(owner=ada, description=GREETER)
    tester = StageRun.objects.get(run=run, stage="tester", iteration=1)
    StageRun.objects.filter(id=tester.id).update(status="running", attempt=1)  # the Tester is at work

    runs.stage_loop_back(stage_run_id=tester.id, attempt=1, output={}, message="2 failed", announce=False)
    agent_services.escalation_raise(
        run_id=run.id,
        stage="developer",
        reason="tests_failing",
        question="The tests still fail after 1 tries. Reply with guidance, or /cancel.",
    )
    told = [notifications.run_event_notify(e.id) for e in RunEvent.objects.filter(run=run)]

    event = RunEvent.objects.get(run=run, type="tests.failed")
    assert event.payload["waits_for_person"] is True and event.payload["next_iteration"] == 2
    texts = [m.text for m in told if m is not None]
    assert not any("Back to the developer" in t for t in texts)
    assert len([t for t in texts if "needs you" in t]) == 1


@pytest.mark.django_db
def test_an_event_costs_one_query_when_the_owner_has_no_telegram_account(other_user, ada, django_assert_num_queries):
    _, theirs = services.project_create(owner=other_user, description=GREETER)
    _, mine = services.project_create(owner=ada, description=GREETER)
    TelegramAccount.objects.filter(user=ada).update(blocked_at=timezone.now())
    started = events.event_record(run_id=theirs.id, type="run.started")
    blocked = events.event_record(run_id=mine.id, type="stage.started", stage="architect")
    quiet = events.event_record(run_id=mine.id, type="agent.progress", stage="developer")

    for event in (started, blocked, quiet):
        with django_assert_num_queries(1):
            assert notifications.run_event_notify(event.id) is None


def test_a_run_the_architect_cannot_plan_ends_with_one_short_message_for_the_person(new_run, ada):
    garbage = " ".join(f"zork{n}" for n in range(80)) + " a telegram bot"
    run = new_run(garbage)

    for stage in ("architect", "notify"):
        pipeline.execute(stage=stage, run_id=run.id, task_id="in-process")

    run.refresh_from_db()
    assert run.status == "failed" and "LLM" in run.error_message  # the record keeps the operator's hint
    texts = list(OutboundMessage.objects.filter(run=run).order_by("id").values_list("text", flat=True))
    assert [t.split(":")[0] for t in texts[:2]] == [
        f"Run #{run.id} started",
        f"Project #{run.project_id} · run #{run.id}",
    ]
    assert len(texts) == 3, texts  # started, planning, and the one message about the failure
    final = texts[-1]
    assert final.startswith(
        f"Project #{run.project_id} · run #{run.id}: I could not plan this. "
        'The scripted architect did not understand: "zork0", "zork1"'
    )
    assert final.endswith("\nSend /examples to see what I can build, then describe it again.")
    assert len(final) < 500 and re.search(r'"zork\d+"…\n', final)  # shortened between words
    for text in texts:
        assert "LLM" not in text and "admin" not in text and "GET /greet" not in text
    assert sum("/examples" in t for t in texts) == 1


@pytest.mark.django_db
def test_a_run_failing_for_reasons_of_the_installation_tells_the_person_it_is_not_their_fault(ada):
    _, run = services.project_create(owner=ada, description=GREETER)
    runs.stage_claim(run_id=run.id, stage="architect", task_id="t-1")
    runs.run_fail(
        run_id=run.id,
        code="agent_not_configured",
        message="The OpenAI-compatible backend needs LLM_BASE_URL (set it in admin, Agent configs).",
    )
    event = events.event_record(run_id=run.id, type="run.notified", stage="notify", payload={"text": "technical"})

    text = notifications.run_event_notify(event.id).text

    assert text == (
        f"Project #{run.project_id} · run #{run.id} stopped while planning the service. {notifications.OUR_SIDE}"
    )


# --- delivery, by the service ------------------------------------------------------------------
@pytest.mark.django_db
def test_a_message_is_sent_once(telegram, ada):
    message = tell(ada, "Run #1 started")

    first = delivery.message_send(message_id=message.id)
    again = delivery.message_send(message_id=message.id)

    assert (first.status, first.retry_in, again.status) == ("sent", None, "sent")
    message.refresh_from_db()
    assert message.telegram_message_id == telegram.sent[0].message_id and message.attempts == 1
    assert telegram.texts_to(ADA_TG) == ["Run #1 started"]


@pytest.mark.django_db
def test_a_429_asks_to_retry_after_telegrams_retry_after(telegram, ada):
    telegram.rate_limit(retry_after=7)
    message = tell(ada)

    outcome = delivery.message_send(message_id=message.id)

    assert (outcome.status, outcome.retry_in) == ("pending", 7.0)
    message.refresh_from_db()
    assert message.attempts == 1 and "429 Too Many Requests: retry after 7" in message.error
    assert (message.next_attempt_at - timezone.now()).total_seconds() > 6
    early = delivery.message_send(message_id=message.id)  # a second task, before Telegram's time
    assert (early.status, len(telegram.calls_of("sendMessage"))) == ("pending", 1) and 6 < early.retry_in <= 7
    due_now(message)
    assert delivery.message_send(message_id=message.id).status == "sent"


@pytest.mark.django_db
def test_a_403_marks_the_message_and_the_account_blocked_without_retry(telegram, ada):
    telegram.forbid()
    message, later = tell(ada, "first"), tell(ada, "second")

    outcome = delivery.message_send(message_id=message.id)

    assert (outcome.status, outcome.retry_in) == ("blocked", None)
    assert status_of(message) == "blocked" and status_of(later) == "blocked"
    account = TelegramAccount.objects.get(user=ada)
    assert account.blocked_at is not None and "bot was blocked by the user" in account.blocked_reason
    assert notifications.notify_person(user_id=ada.id, text="third") is None
    assert delivery.message_send(message_id=later.id).status == "blocked"
    assert len(telegram.calls_of("sendMessage")) == 1


@pytest.mark.django_db
def test_a_deleted_chat_is_recorded_as_blocked(telegram, ada):
    telegram.fail("sendMessage", 400, "Bad Request: chat not found")
    message = tell(ada)

    assert delivery.message_send(message_id=message.id).status == "blocked"
    assert TelegramAccount.objects.get(user=ada).blocked_at is not None


@pytest.mark.django_db
def test_rejected_formatting_falls_back_to_plain_text_once(telegram, ada):
    # The stand-in checks HTML the way Telegram does: an unknown tag is refused.
    message = tell(ada, "<b>Run #3</b> asks: use <flask>? &amp; then", html=True)

    outcome = delivery.message_send(message_id=message.id)

    assert outcome.status == "sent"
    rejected, accepted = telegram.calls_of("sendMessage")
    assert rejected.status == 400 and rejected.params["parse_mode"] == "HTML"
    assert accepted.status == 200 and "parse_mode" not in accepted.params
    assert telegram.texts_to(ADA_TG) == ["Run #3 asks: use ? & then"]


@pytest.mark.django_db
def test_a_scripted_formatting_rejection_resends_the_same_text_plain(telegram, ada):
    telegram.reject_entities()
    message = tell(ada, "<b>Greeter</b> is live &lt;3", html=True)

    assert delivery.message_send(message_id=message.id).status == "sent"
    assert telegram.texts_to(ADA_TG) == ["Greeter is live <3"]


@pytest.mark.django_db
def test_transient_errors_retry_with_backoff_five_times_then_fail(telegram, ada):
    telegram.server_error(times=100)
    message = tell(ada)

    delays = []
    for _ in range(6):
        delays.append(delivery.message_send(message_id=message.id).retry_in)
        due_now(message)

    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, None]
    message.refresh_from_db()
    assert message.status == "failed" and message.attempts == 6
    assert "gave up after 6 attempts" in message.error


@pytest.mark.django_db
def test_an_unreachable_telegram_is_transient_and_the_error_does_not_show_the_token(settings, telegram, ada):
    settings.TELEGRAM_API_URL = "http://127.0.0.1:9/bot{0}/{1}"
    message = tell(ada)

    outcome = delivery.message_send(message_id=message.id)

    assert outcome.status == "pending" and outcome.retry_in == 2.0
    message.refresh_from_db()
    assert "could not be reached" in message.error and telegram.token not in message.error
    assert telegram.token.split(":")[1] not in outcome.detail


@pytest.mark.django_db
def test_without_a_bot_token_a_message_fails_with_the_reason(settings, ada):
    settings.TELEGRAM_BOT_TOKEN = ""
    message = tell(ada)

    assert delivery.message_send(message_id=message.id).status == "failed"
    message.refresh_from_db()
    assert "TELEGRAM_BOT_TOKEN is not set" in message.error


@pytest.mark.django_db
def test_a_newer_messages_delivery_sends_the_older_ones_first(telegram, ada):
    older, newer = tell(ada, "first"), tell(ada, "second")

    outcome = delivery.message_send(message_id=newer.id)  # the older one's task is late, or lost

    assert (outcome.status, outcome.retry_in) == ("sent", None)
    assert telegram.texts_to(ADA_TG) == ["first", "second"]
    assert status_of(older) == "sent" and delivery.message_send(message_id=older.id).status == "sent"
    assert len(telegram.calls_of("sendMessage")) == 2


# --- one attempt at a time: what can and cannot be sent twice -------------------------------------
def claimed(message: OutboundMessage, seconds_ago: float = 0.0) -> int:
    """A live attempt (another task) has claimed the message ``seconds_ago``."""
    attempt = notifications.message_claim(message_id=message.id, attempts_seen=0)
    assert attempt == 1
    OutboundMessage.objects.filter(id=message.id).update(claimed_at=timezone.now() - timedelta(seconds=seconds_ago))
    return attempt


@pytest.mark.django_db
def test_a_message_being_sent_is_not_sent_again_by_a_second_task_or_the_sweep(telegram, ada):
    message = tell(ada, "first")
    claimed(message)

    outcome = delivery.message_send(message_id=message.id)
    swept = notifications.messages_requeue_stale(
        older_than_seconds=0, sending_stale_seconds=delivery.SENDING_STALE_SECONDS
    )

    assert outcome.status == "sending" and 0 < outcome.retry_in <= delivery.IN_FLIGHT_WAIT_SECONDS
    assert swept == [] and telegram.calls_of("sendMessage") == []


@pytest.mark.django_db
def test_a_claim_older_than_any_live_attempt_is_taken_over_and_sent_once_more(telegram, ada):
    message = tell(ada, "first")
    claimed(message, seconds_ago=delivery.SENDING_STALE_SECONDS + 1)

    swept = notifications.messages_requeue_stale(
        older_than_seconds=3600, sending_stale_seconds=delivery.SENDING_STALE_SECONDS
    )
    with capture_logs() as logs:
        outcome = delivery.message_send(message_id=message.id)

    assert swept == [message.id]
    assert outcome.status == "sent" and telegram.texts_to(ADA_TG) == ["first"]
    message.refresh_from_db()
    assert message.attempts == 2 and message.telegram_message_id == telegram.sent[0].message_id
    assert any(entry["event"] == "telegram_send_uncertain" for entry in logs)


@pytest.mark.django_db
def test_a_later_message_goes_ahead_of_one_stuck_in_flight_without_resending_it(telegram, ada):
    stuck, later = tell(ada, "first"), tell(ada, "second")
    claimed(stuck, seconds_ago=delivery.IN_FLIGHT_WAIT_SECONDS + 5)

    outcome = delivery.message_send(message_id=later.id)

    assert outcome.status == "sent" and telegram.texts_to(ADA_TG) == ["second"]
    assert status_of(stuck) == "sending"
    # The task comes back once the stuck claim can be taken over, not before.
    assert delivery.SENDING_STALE_SECONDS - 15 < outcome.retry_in <= delivery.SENDING_STALE_SECONDS


@pytest.mark.django_db
def test_a_late_report_from_an_attempt_taken_over_still_stops_a_second_send(telegram, ada):
    message = tell(ada, "first")
    claimed(message, seconds_ago=delivery.SENDING_STALE_SECONDS + 1)
    assert notifications.message_take_over(message_id=message.id, attempt=1, claimed_before=timezone.now())

    assert notifications.message_mark_sent(message_id=message.id, telegram_message_id=99)  # attempt 1, late

    assert delivery.message_send(message_id=message.id).status == "sent"
    assert telegram.calls_of("sendMessage") == []


@pytest.mark.django_db
def test_a_429_on_an_older_message_holds_the_chat_and_no_message_overtakes_it(telegram, ada):
    telegram.rate_limit(retry_after=5)
    older, newer = tell(ada, "first"), tell(ada, "second")

    outcome = delivery.message_send(message_id=newer.id)

    assert (outcome.status, outcome.retry_in) == ("pending", 5.0)
    assert status_of(older) == "pending" and len(telegram.calls_of("sendMessage")) == 1
    due_now(older)
    delivery.message_send(message_id=newer.id)
    assert telegram.texts_to(ADA_TG) == ["first", "second"]


# --- a question, its message, and the reply that answers it -------------------------------------
@pytest.mark.django_db
def test_a_reply_to_the_question_message_answers_the_escalation(client, telegram, ada, ada_tg):
    _, run = services.project_create(owner=ada, description=GREETER)
    runs.stage_claim(run_id=run.id, stage="architect", task_id="t-1")
    escalation = agent_services.escalation_raise(
        run_id=run.id, stage="developer", reason="agent_blocked", question="Which greeting: <Hello> or Hi?"
    )
    event = RunEvent.objects.get(run=run, type="escalation.raised")
    message = notifications.run_event_notify(event.id)
    assert message.escalation_id == escalation.id and message.html

    assert delivery.message_send(message_id=message.id).status == "sent"
    question = telegram.sent[-1]
    assert "needs you" in question.text and "Which greeting: &lt;Hello&gt; or Hi?" in question.text
    message.refresh_from_db()
    assert message.telegram_message_id == question.message_id

    post_update(
        client, telegram.make_update(from_user=ada_tg, text="Say Hello", reply_to_message_id=question.message_id)
    )

    escalation.refresh_from_db()
    assert (escalation.status, escalation.action, escalation.answer) == ("answered", "guidance", "Say Hello")
    assert escalation.answered_by == ada
    assert telegram.texts_to(ADA_TG)[-1] == f"Thanks. Run #{run.id} goes on with your answer."


@pytest.mark.django_db
def test_budget_command_raises_the_budget_of_the_waiting_run(client, telegram, ada, ada_tg):
    _, run = services.project_create(owner=ada, description=GREETER)
    runs.stage_claim(run_id=run.id, stage="architect", task_id="t-1")
    escalation = agent_services.escalation_raise(
        run_id=run.id, stage="developer", reason="budget", question="The run budget is spent."
    )

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


def test_a_lost_send_task_does_not_hold_back_later_messages_to_the_chat(ada, celery_procs, telegram):
    from config.celery import app

    lost = tell(ada, "first")
    app.control.purge()  # its delivery task is lost before any worker saw it
    later = tell(ada, "second")
    celery_procs.worker(**telegram.worker_env())
    ready = time.monotonic()

    wait_status(later, "sent", 30, celery_procs)

    assert status_of(lost) == "sent" and telegram.texts_to(ADA_TG) == ["first", "second"]
    assert telegram.sent[-1].at - ready < 8  # seconds, not the minute an older pending message held it


@pytest.mark.e2e
def test_a_worker_killed_after_telegram_accepted_leaves_exactly_the_documented_duplicate(ada, celery_procs, telegram):
    """Killed between Telegram accepting a message and recording it: no task, no sweep and no
    later message sends it again while any attempt could still be alive; once its claim is older
    than any attempt can live, it is sent once more (the Bot API has no idempotency key)."""
    telegram.hold_answer(seconds=20)  # Telegram has the message; its answer is still on the way
    worker = celery_procs.worker(**telegram.worker_env())
    first = tell(ada, "first")
    telegram.wait_for_sent(lambda s: s.text == "first", timeout=20)
    celery_procs.kill(worker)
    assert status_of(first) == "sending"

    second = tell(ada, "second")
    celery_procs.worker(**telegram.worker_env())
    wait_status(second, "sent", 30, celery_procs)  # after a short wait behind "first", not held by it
    assert (
        notifications.messages_requeue_stale(older_than_seconds=0, sending_stale_seconds=delivery.SENDING_STALE_SECONDS)
        == []
    )
    assert telegram.texts_to(ADA_TG) == ["first", "second"] and status_of(first) == "sending"

    OutboundMessage.objects.filter(id=first.id).update(  # as if its claim were past any time limit
        claimed_at=timezone.now() - timedelta(seconds=delivery.SENDING_STALE_SECONDS + 1)
    )
    assert notifications.messages_requeue_stale(
        older_than_seconds=3600, sending_stale_seconds=delivery.SENDING_STALE_SECONDS
    ) == [first.id]
    wait_status(first, "sent", 30, celery_procs)
    assert telegram.texts_to(ADA_TG) == ["first", "second", "first"]
    first.refresh_from_db()
    assert first.attempts == 2 and first.telegram_message_id == telegram.sent[-1].message_id
