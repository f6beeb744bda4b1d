"""People in Telegram: accounts linked to Django users, invite codes, and what a person may see.

A Telegram user is let in only through a TelegramAccount, made by an operator (``account_link``)
or by redeeming an invite (``invite_redeem``). Everything else is refused (fail closed).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import structlog
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.errors import Conflict, NotFound, ValidationFailed
from projects import selectors
from projects.models import Deployment, Invite, PipelineRun, Project, TelegramAccount

log = structlog.get_logger(__name__)

# Telegram passes `/start <payload>` payloads of at most 64 characters from this alphabet.
CODE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,40}$")


# --- invites --------------------------------------------------------------------------
@transaction.atomic
def invite_create(*, created_by=None, user=None, ttl_seconds: int | None = None) -> Invite:
    """A single-use code for ``/start <code>``; for ``user``, or for a new user when None."""
    ttl = settings.TELEGRAM_INVITE_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    if ttl <= 0:
        raise ValidationFailed("An invite must be valid for some time.", code="invite_ttl")
    if user is not None and TelegramAccount.objects.filter(user=user).exists():
        raise Conflict(f"{user} is already linked to a Telegram account.", code="invite_user_linked")
    return Invite.objects.create(
        code=secrets.token_urlsafe(15),
        user=user,
        created_by=created_by,
        expires_at=timezone.now() + timedelta(seconds=ttl),
    )


@transaction.atomic
def invite_redeem(*, code: str, telegram_user_id: int, chat_id: int | None, username: str = "") -> TelegramAccount:
    """Link this Telegram user through an invite. A bad, expired or used code changes nothing."""
    code = (code or "").strip()
    if TelegramAccount.objects.filter(telegram_user_id=telegram_user_id).exists():
        raise Conflict("This Telegram account is already linked; the invite was not used.", code="already_linked")
    invite = Invite.objects.select_for_update().filter(code=code).first() if CODE_PATTERN.match(code) else None
    if invite is None:
        raise ValidationFailed(
            "That invite code is not valid. Check it, or ask an operator for a new one.", code="invite_invalid"
        )
    if invite.redeemed_at is not None:
        raise ValidationFailed(
            "That invite code has already been used. Ask an operator for a new one.", code="invite_used"
        )
    if invite.expires_at <= timezone.now():
        raise ValidationFailed("That invite code has expired. Ask an operator for a new one.", code="invite_expired")
    user = invite.user or _new_user(telegram_user_id)
    try:
        with transaction.atomic():
            account = TelegramAccount.objects.create(
                user=user,
                telegram_user_id=telegram_user_id,
                chat_id=chat_id,
                username=(username or "")[:100],
            )
    except IntegrityError as exc:
        raise Conflict(
            "The invited person is already linked to another Telegram account.", code="invite_user_linked"
        ) from exc
    Invite.objects.filter(id=invite.id, redeemed_at__isnull=True).update(
        redeemed_at=timezone.now(), redeemed_by=telegram_user_id
    )
    log.info("invite_redeemed", invite_id=invite.id, user_id=user.id, telegram_user_id=telegram_user_id)
    return account


def _new_user(telegram_user_id: int):
    """A fresh user for an invite without one. Never named after the Telegram username, which
    anyone can choose: ``tg-<id>`` cannot collide with an existing person by accident."""
    users = get_user_model().objects
    base = f"tg-{telegram_user_id}"
    name, n = base, 1
    while users.filter(username=name).exists():
        n += 1
        name = f"{base}-{n}"
    user = users.create_user(username=name)
    user.set_unusable_password()
    user.save(update_fields=["password"])
    return user


# --- accounts -------------------------------------------------------------------------
@transaction.atomic
def account_link(*, user, telegram_user_id: int, chat_id: int | None = None, username: str = "") -> TelegramAccount:
    """An operator lets a Telegram user in as ``user``."""
    if TelegramAccount.objects.filter(telegram_user_id=telegram_user_id).exists():
        raise Conflict(f"Telegram user {telegram_user_id} is already linked.", code="already_linked")
    if TelegramAccount.objects.filter(user=user).exists():
        raise Conflict(f"{user} is already linked to a Telegram account.", code="user_linked")
    return TelegramAccount.objects.create(
        user=user, telegram_user_id=telegram_user_id, chat_id=chat_id, username=(username or "")[:100]
    )


def account_seen(*, account_id: int, chat_id: int, username: str = "") -> None:
    """The person wrote from this private chat: remember where to write back. Whoever writes
    to the bot has not blocked it, so a block recorded earlier is lifted."""
    TelegramAccount.objects.filter(id=account_id).exclude(
        chat_id=chat_id, username=(username or "")[:100], blocked_at__isnull=True
    ).update(chat_id=chat_id, username=(username or "")[:100], blocked_at=None, blocked_reason="")


def account_unblock(*, account_id: int) -> None:
    TelegramAccount.objects.filter(id=account_id).update(blocked_at=None, blocked_reason="")


# --- reads: what a person may see -----------------------------------------------------
def account_for_telegram_user(*, telegram_user_id: int) -> TelegramAccount | None:
    return (
        TelegramAccount.objects.select_related("user")
        .filter(telegram_user_id=telegram_user_id, user__is_active=True)
        .first()
    )


def projects_of(*, user, limit: int = 20) -> list[Project]:
    """The person's newest projects, each with ``latest_runs``, ``live_deployments`` and ``total_cost_usd``."""
    return list(selectors.project_list_queryset(user).filter(owner=user)[:limit])


def project_for(*, user, ref: str) -> Project:
    """A project of the person's by id (``12``, ``#12``) or slug; anyone else's is not found."""
    ref = (ref or "").strip().lstrip("#")
    visible = selectors.projects_visible_to(user)
    if ref.isdigit():
        project = visible.filter(id=int(ref)).first() if len(ref) <= 18 else None  # beyond a bigint: no such id
    else:
        project = visible.filter(slug=ref[:60]).first()
    if project is None:
        raise NotFound(f"I can't find a project “{ref[:60]}” of yours. /projects lists them.", code="project_not_found")
    return project


def project_latest(*, user) -> Project:
    project = selectors.projects_visible_to(user).filter(owner=user).order_by("-created_at", "-id").first()
    if project is None:
        raise NotFound("You have no projects yet. Describe a service to start one.", code="project_not_found")
    return project


def run_active(*, user, ref: str | None = None) -> PipelineRun:
    """The run in progress of a project of the person's (their newest one without ``ref``)."""
    if ref:
        project = project_for(user=user, ref=ref)
        run = PipelineRun.objects.filter(project=project, status__in=PipelineRun.ACTIVE).first()
        if run is None:
            raise NotFound(f"Nothing is running for {project}.", code="run_not_found")
        return run
    run = (
        selectors.runs_visible_to(user)
        .filter(project__owner=user, status__in=PipelineRun.ACTIVE)
        .order_by("-created_at", "-id")
        .first()
    )
    if run is None:
        raise NotFound("Nothing of yours is running.", code="run_not_found")
    return run


@dataclass(frozen=True)
class ProjectStatus:
    project: Project
    run: PipelineRun | None
    cost_usd: Decimal
    live: Deployment | None
    last_deployment: Deployment | None

    @property
    def live_since(self) -> datetime | None:
        return self.live.live_at if self.live else None


def project_status(*, user, ref: str | None = None) -> ProjectStatus:
    project = project_for(user=user, ref=ref) if ref else project_latest(user=user)
    run = PipelineRun.objects.filter(project=project).order_by("-created_at", "-id").first()
    return ProjectStatus(
        project=project,
        run=run,
        cost_usd=Decimal(str(selectors.project_cost(project_id=project.id))),
        live=selectors.live_deployment(project_id=project.id),
        last_deployment=Deployment.objects.filter(project=project).order_by("-created_at", "-id").first(),
    )


def person_ensure(*, username: str):
    """A local user by name (the demo's person); created without a usable password."""
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user
