"""What the system tells a person in Telegram, and the outbox that carries it.

The database is the truth: every message anyone is sent is an ``OutboundMessage`` row (the
outbox is the only way anything is sent). Once the row is committed, ``notify.send_message`` is
enqueued by name; the engine's task (orchestrator/telegram/delivery.py) delivers it and records
each attempt with the ``message_*`` functions here.

- ``notify_person``: what the system owes a person unasked (stage updates, questions, results);
- ``reply_queue``: the answer to what someone wrote (also to someone we do not know);
- ``run_event_notify`` decides which run events a person hears about and renders their text by
  code, from the database. An agent's words reach the person only as its question, quoted as such.
  Not every event is news: heartbeats of progress (stage succeeded, waiting for a worker,
  requeued, agent progress) are left to ``/status`` and the event stream, and a failure is told
  once, by the run's final message, in words for the person (``run_ended_text``).
"""

from __future__ import annotations

import functools
import html as html_lib
from datetime import timedelta

import structlog
from celery import current_app
from django.core.exceptions import ObjectDoesNotExist
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from config import task_names
from projects import sql
from projects.models import OutboundMessage, PipelineRun, Project, RunEvent, Stage, StageRun, TelegramAccount

log = structlog.get_logger(__name__)

# Telegram takes at most this many characters in one message.
MAX_TEXT = 4096
SEND_TASK = task_names.NOTIFY_SEND_MESSAGE

STAGE_DOING = {
    Stage.ARCHITECT: "planning the service",
    Stage.PREPARER: "preparing the repository",
    Stage.DEVELOPER: "writing the code",
    Stage.TESTER: "running the tests",
    Stage.DEPLOYER: "deploying",
}
# The events a person may hear about; any other is decided without reading anything else.
TOLD = frozenset(
    {
        RunEvent.Type.RUN_STARTED,
        RunEvent.Type.STAGE_STARTED,
        RunEvent.Type.TESTS_FAILED,
        RunEvent.Type.AGENT_QUESTION,
        RunEvent.Type.ESCALATION_RAISED,
        RunEvent.Type.NOTIFIED,
    }
)
# Failures whose recorded reason is about what the person asked or did, so it is theirs to read.
# Any other reason is about the installation (backends, workers, Docker, tokens): the person
# hears that the problem is on our side, not advice meant for an operator.
PERSON_REASONS = frozenset(
    {
        "description_not_understood",
        "description_required",
        "description_too_long",
        "escalation_expired",
        "budget_exceeded",
        "tests_failed",
    }
)
OUR_SIDE = (
    "It is a problem on our side, not with your description; the operator can see what happened. "
    "Please try again later."
)


def shorten(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary with "…" (never mid-word)."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-\n\t") + "…"


def _fit(text: str) -> str:
    return shorten(text, MAX_TEXT)


def account_reachable(*, user_id: int) -> TelegramAccount | None:
    """The person's Telegram account, if we may write to it (a chat is known and not blocked)."""
    return TelegramAccount.objects.filter(user_id=user_id, chat_id__isnull=False, blocked_at__isnull=True).first()


def _reachable(account: TelegramAccount | None) -> TelegramAccount | None:
    return account if account is not None and account.chat_id is not None and account.blocked_at is None else None


def _enqueue(message_id: int) -> None:
    transaction.on_commit(lambda: current_app.send_task(SEND_TASK, kwargs={"message_id": message_id}))


@transaction.atomic
def notify_person(
    *,
    user_id: int,
    text: str,
    html: bool = False,
    run_id: int | None = None,
    escalation_id: int | None = None,
    event_id: int | None = None,
) -> OutboundMessage | None:
    """Queue a message to a person; None when they have no reachable Telegram chat.

    With ``event_id``, one message per event and person: a second call returns the first message
    and sends nothing.
    """
    account = account_reachable(user_id=user_id)
    if account is None:
        return None
    return _queue(account, text=text, html=html, run_id=run_id, escalation_id=escalation_id, event_id=event_id)


def _queue(
    account: TelegramAccount,
    *,
    text: str,
    html: bool,
    run_id: int | None,
    escalation_id: int | None,
    event_id: int | None,
) -> OutboundMessage:
    if event_id is not None:
        existing = OutboundMessage.objects.filter(event_id=event_id, account=account).first()
        if existing is not None:
            return existing
    try:
        with transaction.atomic():
            message = OutboundMessage.objects.create(
                account=account,
                chat_id=account.chat_id,
                run_id=run_id,
                escalation_id=escalation_id,
                event_id=event_id,
                text=_fit(text),
                html=html,
            )
    except IntegrityError:  # the same event, told concurrently
        return OutboundMessage.objects.filter(event_id=event_id, account=account).first()
    _enqueue(message.id)
    return message


@transaction.atomic
def reply_queue(*, chat_id: int, text: str, account_id: int | None = None) -> OutboundMessage:
    """Queue the answer to what someone wrote in ``chat_id`` (``account_id`` None: someone we do
    not know). It goes out like every other message: in order, with 429s and hiccups retried.

    Written in the caller's transaction when there is one, so an answer about what a command did
    is committed (and ordered) with it, before anything that happened because of it.
    """
    message = OutboundMessage.objects.create(account_id=account_id, chat_id=chat_id, text=_fit(text))
    _enqueue(message.id)
    return message


# --- run events → messages ------------------------------------------------------------
def run_event_notify(event_id: int) -> OutboundMessage | None:
    """Tell the run's person about this event, if it is one they hear about.

    Called for every event on commit: the event, its run, project, owner and the owner's account
    come in one query, and nothing more is read unless the person is told something.
    """
    if not _owner_reachable(event_id):  # the usual case on a busy factory: not even the event is read
        return None
    event = RunEvent.objects.select_related("run__project__owner__telegram").filter(id=event_id).first()
    if event is None or event.type not in TOLD:
        return None
    try:
        account = _reachable(event.run.project.owner.telegram)
    except ObjectDoesNotExist:  # the owner has no Telegram account
        return None
    if account is None:
        return None
    rendered = render_event(event)
    if rendered is None:
        return None
    text, html, escalation_id = rendered
    with transaction.atomic():
        return _queue(
            account, text=text, html=html, run_id=event.run_id, escalation_id=escalation_id, event_id=event.id
        )


@functools.cache
def _reachable_sql() -> str:
    e, r, p, t = (m._meta.db_table for m in (RunEvent, PipelineRun, Project, TelegramAccount))
    return f"""SELECT 1 FROM {e} e JOIN {r} r ON r.id = e.run_id JOIN {p} p ON p.id = r.project_id
JOIN {t} t ON t.user_id = p.owner_id
WHERE e.id = %s::bigint AND t.chat_id IS NOT NULL AND t.blocked_at IS NULL"""


def _owner_reachable(event_id: int) -> bool:
    """Whether the event's run belongs to someone with a chat we may write to: one prepared
    statement on PostgreSQL (an ORM query costs more to build than to run); elsewhere the ORM."""
    if sql.postgresql():
        return sql.fetchone_prepared(_reachable_sql(), (event_id,)) is not None
    return TelegramAccount.objects.filter(
        user__projects__runs__events__id=event_id, chat_id__isnull=False, blocked_at__isnull=True
    ).exists()


def _name(run: PipelineRun) -> str:
    return run.project.name or f"Project #{run.project_id}"


def render_event(event: RunEvent) -> tuple[str, bool, int | None] | None:
    """(text, html?, escalation id) for the events a person hears about, else None."""
    run, payload, kind = event.run, event.payload or {}, event.type
    if kind == RunEvent.Type.RUN_STARTED:
        return f"Run #{run.id} started: building “{shorten(run.project.description, 120)}”.", False, None
    if kind == RunEvent.Type.STAGE_STARTED:
        if event.stage not in STAGE_DOING:  # Notify's start is followed at once by the result
            return None
        text = f"{_name(run)} · run #{run.id}: {STAGE_DOING[event.stage]}"
        iteration, attempt = payload.get("iteration") or 1, payload.get("attempt") or 1
        notes = [f"iteration {iteration}"] if iteration > 1 else []
        notes += [f"attempt {attempt}"] if attempt > 1 else []
        return text + (f" ({', '.join(notes)})" if notes else "") + "…", False, None
    if kind == RunEvent.Type.TESTS_FAILED:
        if payload.get("waits_for_person"):
            # The next iteration waits for the person: the question that follows says so, once.
            return None
        return _tests_failed(event, run, payload), False, None
    if kind == RunEvent.Type.ROLLED_BACK:
        if payload.get("restored"):
            return (
                f"{_name(run)} · run #{run.id}: the new release failed with the real token, so the "
                "previous release was started again and serves as before.",
                False,
                None,
            )
        return (
            f"{_name(run)} · run #{run.id}: the new release failed with the real token, and the previous "
            "release could not be started again: the bot is down until a release succeeds.",
            False,
            None,
        )
    if kind == RunEvent.Type.AGENT_QUESTION:
        question = str(payload.get("question") or "").strip()
        if not question:
            return None
        text = (
            f"<b>{html_lib.escape(_name(run))} · run #{run.id}</b>: the {html_lib.escape(event.stage or 'agent')} "
            f"agent asks:\n<blockquote>{html_lib.escape(shorten(question, 2000))}</blockquote>"
        )
        return text, True, payload.get("escalation_id")
    if kind == RunEvent.Type.ESCALATION_RAISED:
        question = str(payload.get("question") or "").strip()
        if not question:
            return None
        # The question is rendered by code (orchestrator/escalations.py) and says how to answer;
        # a reply to this very message is the answer.
        text = (
            f"<b>{html_lib.escape(_name(run))} · run #{run.id} needs you.</b>\n"
            f"{html_lib.escape(shorten(question, 3000))}"
        )
        return text, True, payload.get("escalation_id")
    if kind == RunEvent.Type.NOTIFIED:
        if run.status in (PipelineRun.Status.FAILED, PipelineRun.Status.CANCELLED):
            return run_ended_text(run), False, None
        # The final message, rendered by the Notify stage from the database (the live URL).
        text = str(payload.get("text") or run.result_message or "").strip()
        return (text, False, None) if text else None
    return None


def run_reason_for_person(run: PipelineRun) -> str:
    """Why a run stopped, in a sentence or two for the person who asked for it.

    Their own reasons (a description not understood, a question left unanswered, a budget) are
    told in short, from the first line of the recorded reason; anything about the installation
    is not theirs to fix, and they are told so.
    """
    if run.status == PipelineRun.Status.CANCELLED:
        return shorten(run.error_message or "Cancelled.", 200)
    if run.error_code in PERSON_REASONS and run.error_message.strip():
        return shorten(run.error_message.strip().splitlines()[0], 300)
    return OUR_SIDE


def run_ended_text(run: PipelineRun) -> str:
    """The one message that tells a person their run failed or was cancelled."""
    name = f"{_name(run)} · run #{run.id}"
    if run.status == PipelineRun.Status.CANCELLED:
        return f"{name} is cancelled. {run_reason_for_person(run)}"
    if run.error_code == "description_not_understood":
        return (
            f"{name}: I could not plan this. {run_reason_for_person(run)}\n"
            "Send /examples to see what I can build, then describe it again."
        )
    doing = STAGE_DOING.get(run.current_stage, "working on it")
    return f"{name} stopped while {doing}. {run_reason_for_person(run)}"


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
# An attempt is claimed (pending → sending, fenced by the attempt count) before the HTTP call,
# and closed by exactly one of: sent, released for a retry, failed, blocked. Only a claim that
# went stale (its process died) is ever taken over, so a message is never sent by two live
# attempts at once. See docs/ARCHITECTURE.md for the window that remains.
def message_claim(*, message_id: int, attempts_seen: int) -> int | None:
    """Claim one delivery attempt: pending and due → sending. Returns the attempt's number, or
    None if another delivery claimed it first (or it is not due yet)."""
    now = timezone.now()
    done = OutboundMessage.objects.filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now),
        id=message_id,
        status=OutboundMessage.Status.PENDING,
        attempts=attempts_seen,
    ).update(status=OutboundMessage.Status.SENDING, attempts=attempts_seen + 1, claimed_at=now)
    return attempts_seen + 1 if done else None


def message_release(*, message_id: int, attempt: int, error: str, retry_in: float) -> bool:
    """The attempt failed in a way that may pass: pending again, due in ``retry_in`` seconds."""
    return bool(
        OutboundMessage.objects.filter(
            id=message_id,
            status=OutboundMessage.Status.SENDING,
            attempts=attempt,
        ).update(
            status=OutboundMessage.Status.PENDING,
            error=error[:2000],
            next_attempt_at=timezone.now() + timedelta(seconds=retry_in),
        )
    )


def message_take_over(*, message_id: int, attempt: int, claimed_before) -> bool:
    """An attempt that never finished (claimed before ``claimed_before``, past any live attempt's
    time limit): pending again, so it is sent once more. Telegram may have it already."""
    done = OutboundMessage.objects.filter(
        id=message_id,
        status=OutboundMessage.Status.SENDING,
        attempts=attempt,
        claimed_at__lt=claimed_before,
    ).update(
        status=OutboundMessage.Status.PENDING,
        next_attempt_at=None,
        error=f"Attempt {attempt} did not finish; sent again (Telegram may have had it).",
    )
    if done:
        log.warning("telegram_send_uncertain", message_id=message_id, attempt=attempt)
    return bool(done)


def _fence(message_id: int, attempt: int | None):
    rows = OutboundMessage.objects.filter(id=message_id)
    if attempt is None:
        return rows.filter(status__in=OutboundMessage.UNFINISHED)
    return rows.filter(status=OutboundMessage.Status.SENDING, attempts=attempt)


def message_mark_sent(*, message_id: int, telegram_message_id: int) -> bool:
    """Telegram accepted it. Whichever attempt learns that first records it: a late report of
    an attempt taken over still stops the message from going out again."""
    return bool(
        OutboundMessage.objects.filter(id=message_id, status__in=OutboundMessage.UNFINISHED).update(
            status=OutboundMessage.Status.SENT,
            telegram_message_id=telegram_message_id,
            sent_at=timezone.now(),
            next_attempt_at=None,
            error="",
        )
    )


def message_mark_failed(*, message_id: int, error: str, attempt: int | None = None) -> bool:
    return bool(
        _fence(message_id, attempt).update(
            status=OutboundMessage.Status.FAILED, error=error[:2000], next_attempt_at=None
        )
    )


@transaction.atomic
def message_mark_blocked(*, message_id: int, error: str, attempt: int | None = None) -> bool:
    """The chat refuses our messages: this one is not retried, and the account stops getting any."""
    message = OutboundMessage.objects.filter(id=message_id).first()
    if message is None:
        return False
    done = _fence(message_id, attempt).update(
        status=OutboundMessage.Status.BLOCKED, error=error[:2000], next_attempt_at=None
    )
    if message.account_id is not None:
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
    if (
        message is None
        or message.status != OutboundMessage.Status.FAILED
        or (message.account is not None and message.account.blocked_at)
    ):
        return False
    OutboundMessage.objects.filter(id=message_id).update(
        status=OutboundMessage.Status.PENDING, attempts=0, error="", next_attempt_at=None
    )
    _enqueue(message_id)
    return True


def messages_requeue_stale(*, older_than_seconds: float, sending_stale_seconds: float | None = None) -> list[int]:
    """Chats whose delivery seems lost: enqueue their delivery again (the DB is the truth; the
    broker is transport). One task per chat is enough: it sends the chat's messages in order.

    A pending message is stale once due (created, or its retry due) ``older_than_seconds`` ago; a
    message being sent only once its claim is ``sending_stale_seconds`` old (its attempt is
    over: taking it over earlier could send it twice). Returns the ids the tasks were sent for.
    """
    now = timezone.now()
    stale = Q(status=OutboundMessage.Status.PENDING) & Q(due__lt=now - timedelta(seconds=older_than_seconds))
    if sending_stale_seconds is not None:
        stale |= Q(status=OutboundMessage.Status.SENDING, claimed_at__lt=now - timedelta(seconds=sending_stale_seconds))
    rows = (
        OutboundMessage.objects.annotate(due=Coalesce(F("next_attempt_at"), F("created_at")))
        .filter(stale)
        .order_by("id")
        .values_list("chat_id", "id")[:500]
    )
    first_per_chat: dict[int, int] = {}
    for chat_id, message_id in rows:
        first_per_chat.setdefault(chat_id, message_id)
    ids = sorted(first_per_chat.values())
    for message_id in ids:
        current_app.send_task(SEND_TASK, kwargs={"message_id": message_id})
    return ids
