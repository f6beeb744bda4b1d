"""Delivering the outbox (OutboundMessage rows) through the Bot API, in order, without losing liveness.

``message_send`` is what the ``notify.send_message`` task does. It does not send one message: it
delivers the message's chat, oldest unfinished message first, until nothing is left, the chat
must wait, or the task's share of work is done. So a task that was lost (never delivered by
the broker) is covered by the next message's task: a later message never waits for a lost task.

For the chat's oldest unfinished message:
- pending and due → claim it (pending → sending, fenced compare-and-set) *before* the HTTP call,
  then record what Telegram answered:
  - sent → done (a message already sent, failed or blocked is a no-op: delivery is idempotent);
  - 429 → pending again, due after Telegram's own ``retry_after``; the whole chat waits for it;
  - formatting rejected → the same text once more as plain text, at once;
  - chat unavailable (403 blocked, chat deleted) → the message and the account are marked blocked;
  - other transient errors (5xx, timeouts) → pending again with backoff, at most ``MAX_RETRIES``
    times, then failed;
  - other permanent errors → failed;
- pending but its retry is not due → the chat waits until then (the task retries by countdown,
  never by sleeping);
- being sent by another attempt for less than ``IN_FLIGHT_WAIT_SECONDS`` → wait for it briefly
  (that attempt goes on with the chat's next messages itself);
- being sent for longer → its process has probably died: later messages go ahead (order gives
  way to liveness), and the message itself is left alone until its claim is
  ``SENDING_STALE_SECONDS`` old, past the send task's hard time limit, so no live attempt can
  still hold it; then it is taken over and sent again (Telegram may have had it: see
  docs/ARCHITECTURE.md, "Outbound messages: what can still be sent twice").
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from datetime import timedelta

import structlog
from django.utils import timezone

from config.errors import PermanentError, TransientError
from orchestrator.telegram import transport
from projects import notifications
from projects.models import OutboundMessage

log = structlog.get_logger(__name__)

MAX_RETRIES = 5
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 300.0
# A newer message waits at most this long behind an older one being sent to the same chat.
IN_FLIGHT_WAIT_SECONDS = 5.0
# The send task's limits; a claim older than SENDING_STALE_SECONDS belongs to an attempt that is
# over (the hard limit has ended whatever process held it).
TASK_SOFT_TIME_LIMIT = 75
TASK_TIME_LIMIT = 90
SENDING_STALE_SECONDS = 120.0
# One task starts at most this many attempts, within this many seconds; a fresh task goes on.
BATCH_MAX = 20
BATCH_SECONDS = 15.0


@dataclass(frozen=True)
class SendOutcome:
    status: str  # the message's status after this delivery ("pending" while a retry is due)
    retry_in: float | None = None  # seconds until the task should deliver the chat again; None: do not
    detail: str = ""


def backoff(attempt: int) -> float:
    return min(BACKOFF_BASE_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)


def as_plain_text(text: str) -> str:
    """The HTML we render, as plain text: tags dropped, entities unescaped."""
    return html.unescape(re.sub(r"</?[a-zA-Z][a-zA-Z0-9-]*(\s[^<>]*)?>", "", text))


def message_send(*, message_id: int) -> SendOutcome:
    """Deliver this message's chat (this message included, and everything older first)."""
    row = OutboundMessage.objects.filter(id=message_id).values_list("chat_id", "status").first()
    if row is None:
        log.warning("outbound_message_missing", message_id=message_id)
        return SendOutcome("missing")
    chat_id, status = row
    if status not in OutboundMessage.UNFINISHED:
        return SendOutcome(status)
    retry_in, detail = chat_deliver(chat_id=chat_id)
    status = OutboundMessage.objects.filter(id=message_id).values_list("status", flat=True).first() or "missing"
    return SendOutcome(status, retry_in, detail)


def chat_deliver(*, chat_id: int) -> tuple[float | None, str]:
    """Send the chat's unfinished messages in order. Returns (seconds until the chat should be
    delivered again, or None when nothing is left to do here; why)."""
    started, attempts = time.monotonic(), 0
    while True:
        now = timezone.now()
        head, wait, why = None, None, ""
        unfinished = (
            OutboundMessage.objects.select_related("account")
            .filter(chat_id=chat_id, status__in=OutboundMessage.UNFINISHED)
            .order_by("id")[: BATCH_MAX * 2]
        )
        taken_over = False
        for message in unfinished:
            if message.status == OutboundMessage.Status.SENDING:
                age = (now - message.claimed_at).total_seconds()
                if age >= SENDING_STALE_SECONDS:
                    taken_over = notifications.message_take_over(
                        message_id=message.id,
                        attempt=message.attempts,
                        claimed_before=now - timedelta(seconds=SENDING_STALE_SECONDS),
                    )
                    break
                if age < IN_FLIGHT_WAIT_SECONDS:
                    wait, why = max(0.5, IN_FLIGHT_WAIT_SECONDS - age), "an older message is being sent"
                    break
                # Stuck in flight: go ahead without it, and come back when it can be taken over.
                come_back = SENDING_STALE_SECONDS - age
                if wait is None or come_back < wait:
                    wait, why = come_back, "a message stuck in flight is taken over later"
                continue
            if message.next_attempt_at is not None and message.next_attempt_at > now:
                wait, why = (message.next_attempt_at - now).total_seconds(), "the chat waits for a retry"
                break
            head = message
            break
        if taken_over:
            continue
        if head is None:
            return wait, why
        if attempts >= BATCH_MAX or time.monotonic() - started > BATCH_SECONDS:
            return 0.0, "more messages: a fresh task goes on"
        attempts += 1
        retry_in, detail = _attempt(head)
        if retry_in is not None:  # this chat must wait: Telegram said so, or it is failing
            return retry_in, detail


def _attempt(message: OutboundMessage) -> tuple[float | None, str]:
    """One attempt at the chat's oldest message. Returns (retry in, why) when the chat must wait."""
    account = message.account
    if account is not None and account.blocked_at is not None:
        notifications.message_mark_blocked(message_id=message.id, error=account.blocked_reason or "the chat is blocked")
        return None, ""
    attempt = notifications.message_claim(message_id=message.id, attempts_seen=message.attempts)
    if attempt is None:  # another delivery claimed it: it is in flight now
        return None, ""
    mlog = log.bind(message_id=message.id, attempt=attempt, run_id=message.run_id, chat_id=message.chat_id)
    try:
        try:
            sent_id = transport.send_message(message.chat_id, message.text, html=message.html)
        except transport.FormattingRejected as exc:
            mlog.warning("telegram_formatting_rejected", reason=exc.message)
            sent_id = transport.send_message(message.chat_id, as_plain_text(message.text), html=False)
    except transport.RateLimited as exc:
        return _retry_or_fail(message.id, attempt, exc, float(exc.retry_after), mlog)
    except transport.ChatUnavailable as exc:
        mlog.info("telegram_chat_unavailable", reason=exc.message)
        notifications.message_mark_blocked(message_id=message.id, error=exc.message, attempt=attempt)
        return None, ""
    except TransientError as exc:
        if exc.extra.get("maybe_delivered"):
            # Telegram may have acted on it without our hearing back: a retry may duplicate it.
            mlog.warning("telegram_send_maybe_delivered", reason=exc.message)
        return _retry_or_fail(message.id, attempt, exc, backoff(attempt), mlog)
    except PermanentError as exc:
        mlog.warning("telegram_send_failed", reason=exc.message)
        notifications.message_mark_failed(message_id=message.id, error=exc.message, attempt=attempt)
        return None, ""
    # The only window for a duplicate: Telegram has the message, and this row is not yet marked.
    notifications.message_mark_sent(message_id=message.id, telegram_message_id=sent_id)
    mlog.info("telegram_message_sent", telegram_message_id=sent_id)
    return None, ""


def _retry_or_fail(message_id: int, attempt: int, exc: TransientError, delay: float, mlog) -> tuple[float | None, str]:
    if attempt > MAX_RETRIES:
        mlog.warning("telegram_send_gave_up", reason=exc.message)
        notifications.message_mark_failed(
            message_id=message_id, attempt=attempt, error=f"{exc.message} (gave up after {attempt} attempts)"
        )
        return None, ""
    mlog.info("telegram_send_retry", reason=exc.message, retry_in=delay)
    notifications.message_release(message_id=message_id, attempt=attempt, error=exc.message, retry_in=delay)
    return delay, exc.message
