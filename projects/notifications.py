"""What the system tells a person in Telegram, and the record of each message.

The database is the truth: ``notify_person`` writes an ``OutboundMessage`` and, once committed,
enqueues ``notify.send_message`` by name; the engine's task delivers it and records the outcome
with the ``message_mark_*`` functions here.

``run_event_notify`` decides which run events a person hears about and renders their text by
code, from the database. An agent's words reach the person only as its question, quoted as such.
Not every event is news: heartbeats of progress (stage succeeded, waiting for a worker, requeued,
agent progress) are left to ``/status`` and the event stream.
"""
from __future__ import annotations

import html as html_lib
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from celery import current_app
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from projects.models import OutboundMessage, PipelineRun, RunEvent, Stage, StageRun, TelegramAccount

log = structlog.get_logger(__name__)

# Telegram takes at most this many characters in one message.
MAX_TEXT = 4096
SEND_TASK = "notify.send_message"

STAGE_DOING = {
    Stage.ARCHITECT: "planning the service",
    Stage.PREPARER: "preparing the repository",
    Stage.DEVELOPER: "writing the code",
    Stage.TESTER: "running the tests",
    Stage.DEPLOYER: "deploying",
}


def _fit(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def account_reachable(*, user_id: int) -> TelegramAccount | None:
    """The person's Telegram account, if we may write to it (a chat is known and not blocked)."""
    return TelegramAccount.objects.filter(user_id=user_id, chat_id__isnull=False, blocked_at__isnull=True).first()


@transaction.atomic
def notify_person(*, user_id: int, text: str, html: bool = False, run_id: int | None = None,
                  escalation_id: int | None = None, event_id: int | None = None) -> OutboundMessage | None:
    """Queue a message to a person; None when they have no reachable Telegram chat.

    With ``event_id``, one message per event and person: a second call returns the first message
    and sends nothing.
    """
    account = account_reachable(user_id=user_id)
    if account is None:
        return None
    if event_id is not None:
        existing = OutboundMessage.objects.filter(event_id=event_id, account=account).first()
        if existing is not None:
            return existing
    try:
        with transaction.atomic():
            message = OutboundMessage.objects.create(
                account=account, run_id=run_id, escalation_id=escalation_id, event_id=event_id,
                text=_fit(text), html=html,
            )
    except IntegrityError:  # the same event, told concurrently
        return OutboundMessage.objects.filter(event_id=event_id, account=account).first()
    transaction.on_commit(lambda: current_app.send_task(SEND_TASK, kwargs={"message_id": message.id}))
    return message


# --- run events → messages ------------------------------------------------------------
def run_event_notify(event_id: int) -> OutboundMessage | None:
    """Tell the run's person about this event, if it is one they hear about."""
    event = RunEvent.objects.select_related("run__project").filter(id=event_id).first()
    if event is None:
        return None
    rendered = render_event(event)
    if rendered is None:
        return None
    text, html, escalation_id = rendered
    return notify_person(user_id=event.run.project.owner_id, text=text, html=html, run_id=event.run_id,
                         escalation_id=escalation_id, event_id=event.id)


def _name(run: PipelineRun) -> str:
    return run.project.name or f"Project #{run.project_id}"


def render_event(event: RunEvent) -> tuple[str, bool, int | None] | None:
    """(text, html?, escalation id) for the events a person hears about, else None."""
    run, payload, kind = event.run, event.payload or {}, event.type
    if kind == RunEvent.Type.RUN_STARTED:
        description = run.project.description
        short = description if len(description) <= 120 else description[:119] + "…"
        return f"Run #{run.id} started: building “{short}”.", False, None
    if kind == RunEvent.Type.STAGE_STARTED:
        if event.stage not in STAGE_DOING:  # Notify's start is followed at once by the result
            return None
        text = f"{_name(run)} · run #{run.id}: {STAGE_DOING[event.stage]}"
        iteration, attempt = payload.get("iteration") or 1, payload.get("attempt") or 1
        notes = [f"iteration {iteration}"] if iteration > 1 else []
        notes += [f"attempt {attempt}"] if attempt > 1 else []
        return text + (f" ({', '.join(notes)})" if notes else "") + "…", False, None
    if kind == RunEvent.Type.STAGE_FAILED:
        message = str(payload.get("message") or "no reason given")[:1000]
        return f"{_name(run)} · run #{run.id}: the {event.stage} stage failed.\n{message}", False, None
    if kind == RunEvent.Type.TESTS_FAILED:
        return _tests_failed(event, run, payload), False, None
    if kind == RunEvent.Type.AGENT_QUESTION:
        question = str(payload.get("question") or "").strip()
        if not question:
            return None
        text = (f"<b>{html_lib.escape(_name(run))} · run #{run.id}</b>: the {html_lib.escape(event.stage or 'agent')} "
                f"agent asks:\n<blockquote>{html_lib.escape(question[:2000])}</blockquote>")
        return text, True, payload.get("escalation_id")
    if kind == "escalation.raised":
        question = str(payload.get("question") or "").strip()
        if not question:
            return None
        # The question is rendered by code (orchestrator/escalations.py) and says how to answer;
        # a reply to this very message is the answer.
        text = (f"<b>{html_lib.escape(_name(run))} · run #{run.id} needs you.</b>\n"
                f"{html_lib.escape(question[:3000])}")
        return text, True, payload.get("escalation_id")
    if kind == RunEvent.Type.NOTIFIED:
        # The final message, rendered by the Notify stage from the database (URL or reason).
        text = str(payload.get("text") or run.result_message or "").strip()
        return (text, False, None) if text else None
    return None


def _tests_failed(event: RunEvent, run: PipelineRun, payload: dict) -> str:
    iteration = payload.get("iteration") or 1
    tester = StageRun.objects.filter(run_id=run.id, stage=Stage.TESTER, iteration=iteration).first()
    report = ((tester.output or {}).get("report") or {}) if tester else {}
    names = [str(t.get("name", "")) for t in report.get("failing", []) if t.get("name")]
    count = (report.get("failed") or 0) + (report.get("errors") or 0) or len(names)
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    text = f"{_name(run)} · run #{run.id}: tests failed on iteration {iteration}"
    text += f" ({count} failing: {shown})" if shown else ""
    nxt = payload.get("next_iteration")
    return text + (f". Back to the developer for iteration {nxt}." if nxt else ".")


# --- delivery records (written by the engine's notify task) ----------------------------
# The advisory-lock namespace of message deliveries (PostgreSQL's two-key form: this, the id).
_DELIVERY_LOCK = 0x4F555442


@contextmanager
def message_delivery(*, message_id: int) -> Iterator[bool]:
    """The right to deliver this message, for one attempt: True while this delivery holds it,
    False when another delivery of the same message is under way right now.

    A message can have two delivery tasks at once (the stale sweep re-enqueued it while its
    first task was still waiting its turn or retrying); without this both would send it and the
    person would read it twice. On PostgreSQL a session advisory lock, released when the attempt
    ends or its process dies; elsewhere (SQLite, the single-machine default) always True.
    """
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_DELIVERY_LOCK, message_id])
        held = bool(cursor.fetchone()[0])
    try:
        yield held
    finally:
        if held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_DELIVERY_LOCK, message_id])


def message_claim_attempt(*, message_id: int, attempts_seen: int) -> int | None:
    """Count one delivery attempt, if the message is still pending and nobody counted it since.

    Returns the attempt's number, or None if another delivery got there first.
    """
    done = OutboundMessage.objects.filter(
        id=message_id, status=OutboundMessage.Status.PENDING, attempts=attempts_seen
    ).update(attempts=attempts_seen + 1)
    return attempts_seen + 1 if done else None


def message_note_error(*, message_id: int, error: str) -> None:
    """A failed attempt that will be retried: keep its reason."""
    OutboundMessage.objects.filter(id=message_id, status=OutboundMessage.Status.PENDING).update(error=error[:2000])


@transaction.atomic
def message_mark_sent(*, message_id: int, telegram_message_id: int) -> bool:
    """Delivered. A question's message id goes on its escalation too, so a reply to it is the answer."""
    from agents.models import Escalation

    done = OutboundMessage.objects.filter(id=message_id, status=OutboundMessage.Status.PENDING).update(
        status=OutboundMessage.Status.SENT, telegram_message_id=telegram_message_id, sent_at=timezone.now(),
        error="",
    )
    if done:
        escalation_id = OutboundMessage.objects.filter(id=message_id).values_list("escalation_id", flat=True).first()
        if escalation_id:
            Escalation.objects.filter(id=escalation_id).update(telegram_message_id=telegram_message_id)
    return bool(done)


def message_mark_failed(*, message_id: int, error: str) -> bool:
    return bool(OutboundMessage.objects.filter(id=message_id, status=OutboundMessage.Status.PENDING).update(
        status=OutboundMessage.Status.FAILED, error=error[:2000]
    ))


@transaction.atomic
def message_mark_blocked(*, message_id: int, error: str) -> bool:
    """The chat refuses our messages: this one is not retried, and the account stops getting any."""
    message = OutboundMessage.objects.filter(id=message_id).first()
    if message is None:
        return False
    done = OutboundMessage.objects.filter(id=message_id, status=OutboundMessage.Status.PENDING).update(
        status=OutboundMessage.Status.BLOCKED, error=error[:2000]
    )
    account_mark_blocked(account_id=message.account_id, reason=error)
    return bool(done)


@transaction.atomic
def account_mark_blocked(*, account_id: int, reason: str) -> None:
    """Telegram says we may not write to this person any more; their pending messages stop too."""
    now = timezone.now()
    TelegramAccount.objects.filter(id=account_id, blocked_at__isnull=True).update(
        blocked_at=now, blocked_reason=reason[:300]
    )
    OutboundMessage.objects.filter(account_id=account_id, status=OutboundMessage.Status.PENDING).update(
        status=OutboundMessage.Status.BLOCKED, error=f"The chat is blocked: {reason}"[:2000]
    )
    log.info("telegram_account_blocked", account_id=account_id, reason=reason)


@transaction.atomic
def message_resend(*, message_id: int) -> bool:
    """An operator sends a failed message again (not a blocked one: unblock the account first)."""
    message = OutboundMessage.objects.select_related("account").filter(id=message_id).first()
    if message is None or message.status != OutboundMessage.Status.FAILED or message.account.blocked_at:
        return False
    OutboundMessage.objects.filter(id=message_id).update(status=OutboundMessage.Status.PENDING, attempts=0, error="")
    transaction.on_commit(lambda: current_app.send_task(SEND_TASK, kwargs={"message_id": message_id}))
    return True


def messages_requeue_stale(*, older_than_seconds: float) -> list[int]:
    """Pending messages nobody delivered for a long while (their task message was lost):
    enqueue their delivery again. The DB is the truth; the broker is transport."""
    from datetime import timedelta

    from celery import current_app

    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    ids = list(OutboundMessage.objects.filter(status=OutboundMessage.Status.PENDING, created_at__lt=cutoff)
               .order_by("id").values_list("id", flat=True)[:500])
    for message_id in ids:
        current_app.send_task("notify.send_message", kwargs={"message_id": message_id})
    return ids
