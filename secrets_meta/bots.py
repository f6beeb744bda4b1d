"""The bot pool's state changes: BotToken rows and their values in the store.

A token's value goes to the store (scope ``bots``, name ``str(bot_id)``) and nowhere else: not in
a row, an audit line, a log line or an exception message. Validating a token against Telegram is
the engine's job (``orchestrator.bots``), which calls these services with what it learned.

Allocation is atomic: ``bot_assign_free`` locks the project's row (one allocation per project at
a time) and takes a free pool bot with ``SELECT … FOR UPDATE SKIP LOCKED``, so two projects never
get the same bot, and neither waits for the other's row.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from django.db import transaction
from django.utils import timezone

from config.errors import Conflict, NotFound
from projects.models import Project
from secrets_meta import redaction
from secrets_meta.models import BotToken, SecretAudit
from secrets_meta.stores import BOTS_SCOPE, get_store

log = structlog.get_logger(__name__)

Status, Source = BotToken.Status, BotToken.Source


@dataclass(frozen=True)
class Identity:
    """What Telegram said the bot is (getMe)."""

    id: int
    username: str
    first_name: str = ""


def _audit(row: BotToken, *, action: str, actor: str, detail: str = "") -> None:
    SecretAudit.objects.create(bot_token=row, action=action, actor=actor[:60], detail=detail[:300])


def bot_token_value(row: BotToken) -> str | None:
    """The token of a bot, from the store (None when the store lost it)."""
    token = get_store().get(BOTS_SCOPE, row.store_name)
    redaction.register("TELEGRAM_BOT_TOKEN", token)
    return token


@transaction.atomic
def bot_add(*, token: str, identity: Identity, actor: str, source: str = Source.POOL) -> BotToken:
    """Add a validated bot to the pool (``free``), its token to the store. A bot that is already
    known is refused while it serves a project; a retired, invalid or free one is taken back
    with the new token."""
    redaction.register("TELEGRAM_BOT_TOKEN", token)
    row = BotToken.objects.select_for_update().filter(bot_id=identity.id).first()
    now = timezone.now()
    if row is not None and row.status == Status.ASSIGNED:
        raise Conflict(
            f"@{row.username} already serves a project here.", code="bot_token_in_use", extra={"bot": row.username}
        )
    created = row is None
    if created:
        row = BotToken(bot_id=identity.id, created_by=actor[:60])
    row.username, row.first_name = identity.username, identity.first_name[:128]
    row.status, row.source, row.project, row.assigned_at = Status.FREE, source, None, None
    row.token_length, row.last_validated_at, row.last_error = len(token), now, ""
    row.save()
    get_store().put(BOTS_SCOPE, row.store_name, token)
    _audit(row, action="added" if created else "readded", actor=actor, detail=f"@{identity.username} ({source})")
    log.info("bot_added", bot_token_id=row.id, username=row.username, source=source)
    return row


@transaction.atomic
def bot_assign_own(*, project_id: int, token: str, identity: Identity, actor: str) -> BotToken:
    """A person's own bot for their project: stored (``source=user``) and assigned at once. The
    project's earlier bot is let go: a pool bot goes back to the pool, an earlier own bot is
    retired and its token forgotten. The same bot again is a no-op (its token refreshed)."""
    Project.objects.select_for_update().get(id=project_id)
    current = BotToken.objects.select_for_update().filter(project_id=project_id, status=Status.ASSIGNED).first()
    if current is not None and current.bot_id == identity.id:
        get_store().put(BOTS_SCOPE, current.store_name, token)
        BotToken.objects.filter(id=current.id).update(
            token_length=len(token), last_validated_at=timezone.now(), last_error="", username=identity.username
        )
        _audit(current, action="token_replaced", actor=actor)
        current.refresh_from_db()
        return current
    if current is not None:
        _let_go(current, actor=actor, why="replaced by the person's own bot")
    row = bot_add(token=token, identity=identity, actor=actor, source=Source.USER)
    row.status, row.project_id, row.assigned_at = Status.ASSIGNED, project_id, timezone.now()
    row.save(update_fields=["status", "project", "assigned_at", "updated_at"])
    _audit(row, action="assigned", actor=actor, detail=f"project #{project_id}")
    return row


@transaction.atomic
def bot_assign_free(*, project_id: int, actor: str = "system") -> BotToken | None:
    """The project's assigned bot, else a free pool bot assigned to it now; None when the pool is
    empty. Safe under concurrency: never two projects on one bot, never two bots on one project."""
    Project.objects.select_for_update().get(id=project_id)
    current = BotToken.objects.filter(project_id=project_id, status=Status.ASSIGNED).first()
    if current is not None:
        return current
    row = (
        BotToken.objects.select_for_update(skip_locked=True)
        .filter(status=Status.FREE, source=Source.POOL)
        .order_by("last_validated_at", "id")
        .first()
    )
    if row is None:
        return None
    row.status, row.project_id, row.assigned_at = Status.ASSIGNED, project_id, timezone.now()
    row.save(update_fields=["status", "project", "assigned_at", "updated_at"])
    _audit(row, action="assigned", actor=actor, detail=f"project #{project_id}")
    log.info("bot_assigned", bot_token_id=row.id, username=row.username, project_id=project_id)
    return row


def _let_go(row: BotToken, *, actor: str, why: str) -> BotToken:
    """A bot stops serving its project: a pool bot becomes free, a person's own bot is retired and
    its token forgotten (it is theirs, never handed to anyone else)."""
    project_id = row.project_id
    if row.source == Source.USER:
        row.status = Status.RETIRED
        get_store().delete(BOTS_SCOPE, row.store_name)
    else:
        row.status = Status.FREE
    row.project, row.assigned_at = None, None
    row.save(update_fields=["status", "project", "assigned_at", "updated_at"])
    _audit(row, action="released", actor=actor, detail=f"project #{project_id}: {why}"[:300])
    log.info("bot_released", bot_token_id=row.id, username=row.username, project_id=project_id, status=row.status)
    return row


def _locked(bot_token_id: int) -> BotToken:
    row = BotToken.objects.select_for_update().filter(id=bot_token_id).first()
    if row is None:
        raise NotFound("No such bot.", code="bot_not_found")
    return row


@transaction.atomic
def bot_release(*, bot_token_id: int, actor: str = "system", why: str = "project deleted") -> BotToken:
    """Let a bot go from its project (its webhook and commands already cleared by the engine)."""
    row = _locked(bot_token_id)
    if row.status != Status.ASSIGNED:
        return row  # released already: nothing to do
    return _let_go(row, actor=actor, why=why)


@transaction.atomic
def bot_retire(*, bot_token_id: int, actor: str) -> BotToken:
    """Never hand this bot out again; its token is forgotten. Refused while it serves a project."""
    row = _locked(bot_token_id)
    if row.status == Status.ASSIGNED:
        raise Conflict(
            f"@{row.username} serves project #{row.project_id}: release it first.", code="bot_token_assigned"
        )
    if row.status != Status.RETIRED:
        row.status = Status.RETIRED
        row.save(update_fields=["status", "updated_at"])
        get_store().delete(BOTS_SCOPE, row.store_name)
        _audit(row, action="retired", actor=actor)
    return row


@transaction.atomic
def bot_mark_invalid(*, bot_token_id: int, error: str, actor: str = "system") -> BotToken:
    """Telegram refused the bot (revoked, in use elsewhere): not handed out until revalidated. An
    assigned bot stays with its project (the project is not left without its bot's record)."""
    row = _locked(bot_token_id)
    fields = ["last_error", "last_validated_at", "updated_at"]
    row.last_error, row.last_validated_at = error[:300], timezone.now()
    if row.status == Status.FREE:
        row.status = Status.INVALID
        fields.append("status")
    row.save(update_fields=fields)
    _audit(row, action="invalid", actor=actor, detail=error)
    return row


@transaction.atomic
def bot_mark_valid(*, bot_token_id: int, identity: Identity, actor: str = "system") -> BotToken:
    """Telegram accepts the bot again: an invalid pool bot becomes free."""
    row = _locked(bot_token_id)
    row.username, row.first_name = identity.username, identity.first_name[:128]
    row.last_error, row.last_validated_at = "", timezone.now()
    if row.status == Status.INVALID:
        row.status = Status.FREE if row.project_id is None else Status.ASSIGNED
    row.save(update_fields=["username", "first_name", "last_error", "last_validated_at", "status", "updated_at"])
    _audit(row, action="validated", actor=actor)
    return row
