"""Telegram bots for bot projects: validating a token, the pool, a person's own bot.

The validation chain, each step with its own code and message (``BotTokenRefused``):

1. format: digits, a colon, 35+ characters of ``[A-Za-z0-9_-]`` (``bot_token_format``);
2. ``getMe``: 401 means the token is wrong or revoked (``bot_token_rejected``);
3. ``getWebhookInfo``: a webhook is set, so the bot is in use elsewhere (``bot_token_webhook``);
4. ``getUpdates`` with no wait and no offset (nothing is confirmed, so no update is taken from
   its owner): 409 means another program polls it (``bot_token_polled``);
5. it does not already serve another project here (``bot_token_in_use``).

A token is never put in an exception message, a log line, an event or an answer: people see the
bot's @username, logs the BotToken id. Telegram is reached through ``orchestrator.telegram.transport``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import structlog
from celery import current_app
from django.db import transaction
from django.db.models import Q

from agents.models import Escalation
from config import task_names
from config.errors import AppError, NotFound, PermanentError, TransientError, ValidationFailed
from orchestrator.telegram import transport
from projects.models import Project
from secrets_meta import bots as pool
from secrets_meta import redaction
from secrets_meta.models import BotToken

log = structlog.get_logger(__name__)

TOKEN_FORMAT = re.compile(r"^[0-9]+:[A-Za-z0-9_-]{35,}$")
# Something a person may have meant as a token (a message carrying one is never stored as text).
MISSING = "the token is missing from the secret store"
TOKEN_LIKE = re.compile(r"(?<![0-9A-Za-z])[0-9]{5,}:[A-Za-z0-9_-]{25,}")


class BotTokenRefused(ValidationFailed):
    """A token that cannot be used; ``code`` says which check refused it."""

    code = "bot_token_refused"


@dataclass(frozen=True)
class Validated:
    identity: pool.Identity

    @property
    def username(self) -> str:
        return self.identity.username


class ProjectBot(NamedTuple):
    """The bot a project runs as: its row and its token (unpacks as ``(row, token)``)."""

    row: BotToken
    token: str

    @property
    def username(self) -> str:
        return self.row.username


def looks_like_token(text: str) -> str | None:
    """The token-shaped part of ``text``, if any (what a person pasted, maybe malformed)."""
    found = TOKEN_LIKE.search(text or "")
    return found.group(0) if found else None


# --- validation --------------------------------------------------------------------------------
def validate_token(token: str, *, project_id: int | None = None) -> pool.Identity:
    """Run the chain; the bot's identity, or BotTokenRefused (TransientError: Telegram unreachable).

    ``project_id``: the project the token is for (a bot already serving it is not "in use", and
    its own release may be the one polling it, so it is not probed)."""
    token = (token or "").strip()
    if not TOKEN_FORMAT.match(token):
        raise BotTokenRefused(
            "That is not a bot token. A token looks like 123456789:AAE… : digits, a colon, then at least "
            "35 letters, digits, _ or -. Copy it from @BotFather (/mybots → your bot → API Token).",
            code="bot_token_format",
        )
    redaction.register("TELEGRAM_BOT_TOKEN", token)
    try:
        me = transport.bot_get_me(token)
    except PermanentError as exc:
        detail = "" if exc.code == "telegram_unauthorized" else f" ({exc.message})"
        raise BotTokenRefused(
            f"Telegram does not accept this token: the token is wrong or revoked{detail}. "
            "Check it in @BotFather (/mybots → your bot → API Token).",
            code="bot_token_rejected",
        ) from None
    except TransientError as exc:
        raise _unreachable(exc) from None
    identity = pool.Identity(id=me.id, username=me.username, first_name=me.first_name)
    name = f"@{me.username}" if me.username else "this bot"
    serving = BotToken.objects.filter(bot_id=me.id, status=BotToken.Status.ASSIGNED).values("project_id").first()
    ours = serving is not None and project_id is not None and serving["project_id"] == project_id
    try:
        if transport.bot_get_webhook_info(token).url:
            raise BotTokenRefused(
                f"A webhook is set for {name}: the bot is in use elsewhere. Stop the program that uses it "
                "(or call deleteWebhook), or create a new bot with @BotFather.",
                code="bot_token_webhook",
                extra={"bot": me.username},
            )
        if not ours:
            transport.bot_get_updates(token, timeout=0, limit=1)
    except PermanentError as exc:
        if exc.code == "telegram_conflict" and "webhook" in exc.message.lower():
            raise BotTokenRefused(
                f"A webhook is set for {name}: the bot is in use elsewhere.",
                code="bot_token_webhook",
                extra={"bot": me.username},
            ) from None
        if exc.code == "telegram_conflict":
            raise BotTokenRefused(
                f"Another program polls {name} (Telegram answered 409 Conflict). Stop it first, or create a "
                "new bot with @BotFather: a bot can be run by one program at a time.",
                code="bot_token_polled",
                extra={"bot": me.username},
            ) from None
        raise BotTokenRefused(
            f"Telegram refused to check {name}: {exc.message}", code="bot_token_rejected", extra={"bot": me.username}
        ) from None
    except TransientError as exc:
        raise _unreachable(exc) from None
    if serving is not None and not ours:
        raise BotTokenRefused(
            f"{name} already serves another project here. Use another bot.",
            code="bot_token_in_use",
            extra={"bot": me.username},
        )
    return identity


def _unreachable(exc: TransientError) -> TransientError:
    return TransientError(
        f"Telegram could not be reached to check the token ({exc.code}). Please try again in a minute.",
        code="bot_token_unchecked",
    )


# --- the pool ------------------------------------------------------------------------------------
def pool_add(token: str, *, actor: str = "system") -> BotToken:
    """Validate a token and add its bot to the pool (free)."""
    identity = validate_token(token)
    return pool.bot_add(token=token.strip(), identity=identity, actor=actor)


def bot_for_project(project_id: int) -> ProjectBot | None:
    """The bot the project runs as: its assigned one, else a free pool bot taken now (unless the
    person wants their own bot). None: the run must ask the person for a token."""
    project = Project.objects.filter(id=project_id).only("id", "own_bot").first()
    if project is None:
        raise NotFound(f"No project #{project_id}.", code="project_not_found")
    row = BotToken.objects.filter(project_id=project_id, status=BotToken.Status.ASSIGNED).first()
    if row is None and not project.own_bot:
        row = pool.bot_assign_free(project_id=project_id)
    if row is None:
        return None
    token = pool.bot_token_value(row)
    if token is None:
        log.error("bot_token_value_missing", bot_token_id=row.id, project_id=project_id)
        pool.bot_mark_invalid(bot_token_id=row.id, error=MISSING)
        return None
    return ProjectBot(row=row, token=token)


def own_token_intake(project_id: int, token: str, actor: str) -> BotToken:
    """A person's own token for their project: validated, stored, assigned; a run waiting for it
    goes on (``escalations.secrets_provided`` once this commits)."""
    token = (token or "").strip()
    identity = validate_token(token, project_id=project_id)
    with transaction.atomic():
        row = pool.bot_assign_own(project_id=project_id, token=token, identity=identity, actor=actor)
        transaction.on_commit(
            lambda: current_app.send_task(task_names.SECRETS_PROVIDED, kwargs={"project_id": project_id})
        )
    log.info("bot_own_token_taken", bot_token_id=row.id, project_id=project_id, username=row.username)
    return row


def bot_release(project_id: int, *, actor: str = "system", why: str = "project deleted") -> BotToken | None:
    """Let the project's bot go: its webhook deleted and its commands cleared at Telegram, then
    back to the pool (a person's own bot is retired and its token forgotten). A bot Telegram no
    longer accepts is marked invalid instead; one that cannot be cleared now (Telegram
    unreachable) too, so it is never handed out dirty (revalidate it later)."""
    row = BotToken.objects.filter(project_id=project_id, status=BotToken.Status.ASSIGNED).first()
    if row is None:
        return None
    token = pool.bot_token_value(row)
    error = ""
    if token is None:
        error = MISSING
    else:
        try:
            transport.bot_delete_webhook(token)
            transport.bot_delete_my_commands(token)
        except AppError as exc:
            error = f"could not clear the bot at release: {exc.message}"
    released = pool.bot_release(bot_token_id=row.id, actor=actor, why=why)
    if error and released.status == BotToken.Status.FREE:
        released = pool.bot_mark_invalid(bot_token_id=row.id, error=error, actor=actor)
    return released


def bot_refused(*, project_id: int, error: str) -> BotToken | None:
    """Telegram refuses the project's bot now (its token revoked): it stops serving the project
    (a pool bot is kept as invalid for an operator to look at; a person's own is retired), so the
    next deploy takes another bot from the pool or asks the person for a token."""
    row = BotToken.objects.filter(project_id=project_id, status=BotToken.Status.ASSIGNED).first()
    if row is None:
        return None
    with transaction.atomic():  # never free in between: no other project may take it
        released = pool.bot_release(bot_token_id=row.id, why=f"refused by Telegram: {error}"[:200])
        if released.status == BotToken.Status.FREE:
            released = pool.bot_mark_invalid(bot_token_id=row.id, error=error)
    return released


def revalidate(bot_token_id: int, *, actor: str = "system") -> BotToken:
    """Check a bot against Telegram again: valid → its error cleared (an invalid pool bot is free
    again); refused → marked invalid with the reason. Raises TransientError when Telegram cannot
    be reached (nothing changes)."""
    row = BotToken.objects.filter(id=bot_token_id).first()
    if row is None:
        raise NotFound("No such bot.", code="bot_not_found")
    if row.status == BotToken.Status.RETIRED:
        raise ValidationFailed(f"@{row.username} is retired: add its token again to use it.", code="bot_retired")
    token = pool.bot_token_value(row)
    if token is None:
        return pool.bot_mark_invalid(bot_token_id=row.id, error=MISSING, actor=actor)
    try:
        identity = validate_token(token, project_id=row.project_id)
    except BotTokenRefused as exc:
        return pool.bot_mark_invalid(bot_token_id=row.id, error=exc.message, actor=actor)
    if identity.id != row.bot_id:  # cannot happen with a real token (the id is its prefix)
        return pool.bot_mark_invalid(bot_token_id=row.id, error="the token belongs to another bot", actor=actor)
    return pool.bot_mark_valid(bot_token_id=row.id, identity=identity, actor=actor)


# --- which project a person's token is for ---------------------------------------------------------
def token_project_for(*, user, escalation: Escalation | None = None) -> Project | None:
    """The project a token a person sends is for: the one whose question they replied to; else
    their project whose run waits for a token (the newest); else their most recent bot project."""
    if escalation is not None and escalation.reason == Escalation.Reason.BOT_TOKEN:
        return escalation.run.project
    waiting = (
        Escalation.objects.select_related("run__project")
        .filter(run__project__owner=user, status=Escalation.Status.OPEN, reason=Escalation.Reason.BOT_TOKEN)
        .order_by("-created_at")
        .first()
    )
    if waiting is not None:
        return waiting.run.project
    return (
        Project.objects.filter(owner=user)
        .filter(Q(kind=Project.Kind.TELEGRAM_BOT) | Q(own_bot=True))
        .order_by("-created_at", "-id")
        .first()
    )
