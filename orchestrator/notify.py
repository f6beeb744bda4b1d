"""Delivering an OutboundMessage through Telegram, and what each answer means for it.

``message_send`` makes one attempt and says what the task should do next:
- sent → done (a message already sent, failed or blocked is a no-op: delivery is idempotent);
- 429 → retry after Telegram's own ``retry_after``;
- formatting rejected → the same text once more as plain text, at once;
- chat unavailable (403 blocked, chat deleted) → the message and the account are marked blocked, no retry;
- other transient errors (5xx, timeouts) → retry with backoff, at most ``MAX_RETRIES`` times, then failed;
- other permanent errors → failed.
Messages to one chat go out in the order they were written: one waits (by retrying, never by
sleeping) while an older one to the same chat is still pending, for at most ``ORDER_WAIT_SECONDS``.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import timedelta

import structlog
from django.utils import timezone

from config.errors import PermanentError, TransientError
from orchestrator.integrations import telegram
from projects import notifications
from projects.models import OutboundMessage

log = structlog.get_logger(__name__)

MAX_RETRIES = 5
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 300.0
ORDER_WAIT_SECONDS = 60.0
ORDER_RETRY_SECONDS = 0.5


@dataclass(frozen=True)
class SendOutcome:
    status: str  # the message's status after this attempt ("pending" while a retry is due)
    retry_in: float | None = None  # seconds until the task should try again; None: do not
    detail: str = ""


def backoff(attempt: int) -> float:
    return min(BACKOFF_BASE_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)


def as_plain_text(text: str) -> str:
    """The HTML we render, as plain text: tags dropped, entities unescaped."""
    return html.unescape(re.sub(r"</?[a-zA-Z][a-zA-Z0-9-]*(\s[^<>]*)?>", "", text))


def message_send(*, message_id: int) -> SendOutcome:
    message = OutboundMessage.objects.select_related("account").filter(id=message_id).first()
    if message is None:
        log.warning("outbound_message_missing", message_id=message_id)
        return SendOutcome("missing")
    if message.status != OutboundMessage.Status.PENDING:
        return SendOutcome(message.status)
    account = message.account
    if account.blocked_at is not None or account.chat_id is None:
        notifications.message_mark_blocked(message_id=message.id, error=account.blocked_reason or "no chat known")
        return SendOutcome(OutboundMessage.Status.BLOCKED)
    older = OutboundMessage.objects.filter(
        account_id=account.id, status=OutboundMessage.Status.PENDING, id__lt=message.id,
        created_at__gte=timezone.now() - timedelta(seconds=ORDER_WAIT_SECONDS),
    ).exists()
    if older:
        return SendOutcome(OutboundMessage.Status.PENDING, ORDER_RETRY_SECONDS, "an older message goes first")
    with notifications.message_delivery(message_id=message.id) as ours:
        if not ours:  # another delivery of this message is sending it; it retries if it must
            return SendOutcome(OutboundMessage.Status.PENDING, None, "another delivery is on it")
        message.refresh_from_db(fields=["status", "attempts"])  # that delivery may have just sent it
        if message.status != OutboundMessage.Status.PENDING:
            return SendOutcome(message.status)
        return _attempt(message)


def _attempt(message: OutboundMessage) -> SendOutcome:
    account = message.account
    attempt = notifications.message_claim_attempt(message_id=message.id, attempts_seen=message.attempts)
    if attempt is None:  # another delivery of the same task counted this attempt
        return SendOutcome(OutboundMessage.Status.PENDING, None, "another delivery is on it")
    mlog = log.bind(message_id=message.id, attempt=attempt, run_id=message.run_id)
    try:
        try:
            sent_id = telegram.send_message(account.chat_id, message.text, html=message.html)
        except telegram.FormattingRejected as exc:
            mlog.warning("telegram_formatting_rejected", reason=exc.message)
            sent_id = telegram.send_message(account.chat_id, as_plain_text(message.text), html=False)
    except telegram.RateLimited as exc:
        return _retry_or_fail(message.id, attempt, exc, float(exc.retry_after), mlog)
    except telegram.ChatUnavailable as exc:
        mlog.info("telegram_chat_unavailable", reason=exc.message)
        notifications.message_mark_blocked(message_id=message.id, error=exc.message)
        return SendOutcome(OutboundMessage.Status.BLOCKED, None, exc.message)
    except TransientError as exc:
        return _retry_or_fail(message.id, attempt, exc, backoff(attempt), mlog)
    except PermanentError as exc:
        mlog.warning("telegram_send_failed", reason=exc.message)
        notifications.message_mark_failed(message_id=message.id, error=exc.message)
        return SendOutcome(OutboundMessage.Status.FAILED, None, exc.message)
    notifications.message_mark_sent(message_id=message.id, telegram_message_id=sent_id)
    mlog.info("telegram_message_sent", telegram_message_id=sent_id)
    return SendOutcome(OutboundMessage.Status.SENT)


def _retry_or_fail(message_id: int, attempt: int, exc: TransientError, delay: float, mlog) -> SendOutcome:
    if attempt > MAX_RETRIES:
        mlog.warning("telegram_send_gave_up", reason=exc.message)
        notifications.message_mark_failed(message_id=message_id,
                                          error=f"{exc.message} (gave up after {attempt} attempts)")
        return SendOutcome(OutboundMessage.Status.FAILED, None, exc.message)
    mlog.info("telegram_send_retry", reason=exc.message, retry_in=delay)
    notifications.message_note_error(message_id=message_id, error=exc.message)
    return SendOutcome(OutboundMessage.Status.PENDING, delay, exc.message)
