"""State changes of secrets: values go to the store, metadata and an audit row to our tables.

A value is never logged, never put in an exception message or an audit row, and leaves this
module only in ``release_environment``'s answer (to the Deployer, which puts it in a release's
environment in memory).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from celery import current_app
from django.db import transaction
from django.utils import timezone

from config import task_names
from config.errors import NotFound, PermanentError, ValidationFailed
from projects.models import Project
from secrets_meta.models import SecretAudit, SecretMeta
from secrets_meta.stores import get_store, project_scope

log = structlog.get_logger(__name__)

KEY_PATTERN = r"^[A-Z_][A-Z0-9_]*$"
KEY_MAX_LENGTH = 100
# At most this many characters (64 Ki); a value is text (no NUL) with something in it.
VALUE_MAX_LENGTH = 64 * 1024
# A project holds at most this many secrets (so the list is one bounded answer).
SECRETS_PER_PROJECT = 100
# Set by the factory in every release's environment: never a secret's name.
RESERVED_KEYS = frozenset(
    {"PATH", "HOME", "PORT", "PYTHONPATH", "PYTHONHOME", "LD_PRELOAD", "LD_LIBRARY_PATH", "RELEASE_ID"}
)
# A bot project's token is no plain secret: it must pass Telegram's checks before anything uses
# it, and that is the engine's job (orchestrator.bots), which this app may not call. It comes in
# through the project's bot endpoint or /token in the chat (see ``validate_key_for``).
BOT_TOKEN_KEY = "TELEGRAM_BOT_TOKEN"
_KEY_RE = re.compile(KEY_PATTERN)
Kind = SecretMeta.Kind


# --- validation (also used by the admin's form) --------------------------------------------
def validate_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValidationFailed("A secret needs a name.", code="secret_name_invalid")
    shown = key[:KEY_MAX_LENGTH].encode("ascii", "backslashreplace").decode()
    if len(key) > KEY_MAX_LENGTH:
        raise ValidationFailed(
            f"The secret name {shown}... is longer than {KEY_MAX_LENGTH} characters.",
            code="secret_name_invalid",
            extra={"limit": KEY_MAX_LENGTH},
        )
    if not _KEY_RE.match(key):
        raise ValidationFailed(
            f"The secret name {shown} is not valid: use upper case letters, digits and _, not starting "
            "with a digit (e.g. API_KEY).",
            code="secret_name_invalid",
            extra={"pattern": KEY_PATTERN},
        )
    if key in RESERVED_KEYS:
        raise ValidationFailed(
            f"{key} is set by the factory in every release; choose another name.",
            code="secret_name_reserved",
        )
    return key


def validate_value(key: str, value: object) -> str:
    """The value's rules; the messages name the secret and never repeat the value."""
    if not isinstance(value, str):
        raise ValidationFailed(f"The value of {key} must be text.", code="secret_value_invalid")
    if not value.strip():
        raise ValidationFailed(f"The value of {key} is empty.", code="secret_value_empty")
    if len(value) > VALUE_MAX_LENGTH:
        raise ValidationFailed(
            f"The value of {key} is {len(value)} characters long; the limit is {VALUE_MAX_LENGTH}.",
            code="secret_value_too_long",
            extra={"length": len(value), "limit": VALUE_MAX_LENGTH},
        )
    if "\x00" in value:
        raise ValidationFailed(f"The value of {key} contains a NUL character.", code="secret_value_invalid")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValidationFailed(f"The value of {key} is not valid text.", code="secret_value_invalid") from None
    return value


def validate_key_for(*, project_id: int, key: str) -> str:
    """``validate_key``, and TELEGRAM_BOT_TOKEN refused for a project that runs (or may run: not
    planned yet) as a Telegram bot: the Deployer gives a bot release its bot's token, which comes
    in through the bot endpoint. A web service may need one as a plain secret (to post to a chat)."""
    validate_key(key)
    if key == BOT_TOKEN_KEY:
        kind = Project.objects.filter(id=project_id).values_list("kind", flat=True).first()
        if kind != Project.Kind.WEB_SERVICE:
            raise ValidationFailed(
                f"{BOT_TOKEN_KEY} is the token of the bot the project runs as: it is checked with Telegram "
                f"before it is used, so it is not set as a secret. Give it with PUT /api/projects/{project_id}/bot/ "
                "(or /token in the factory's chat).",
                code="secret_name_reserved",
                extra={"use": f"/api/projects/{project_id}/bot/"},
            )
    return key


def _require_project(project_id: int) -> None:
    if not Project.objects.filter(id=project_id).exists():
        raise NotFound(f"There is no project {project_id}.", code="project_not_found")


def _locked_meta(*, project_id: int, key: str, kind: str, actor: str) -> tuple[SecretMeta, bool]:
    """The secret's row, created if needed, locked for the rest of the transaction."""
    meta, created = SecretMeta.objects.get_or_create(
        project_id=project_id, key=key, defaults={"kind": kind, "created_by": actor}
    )
    return SecretMeta.objects.select_for_update().get(id=meta.id), created


def _audit(meta: SecretMeta, *, action: str, actor: str, detail: str = "") -> None:
    SecretAudit.objects.create(secret=meta, action=action, actor=actor, detail=detail)


# --- services -------------------------------------------------------------------------------
@transaction.atomic
def secret_put(*, project_id: int, key: str, value: str, actor: str, kind: str = Kind.USER) -> SecretMeta:
    """Store a secret's value (new or replaced) and its metadata; a run waiting for the project's
    secrets is told once this commits (SECRETS_PROVIDED). An existing secret keeps its kind."""
    validate_key_for(project_id=project_id, key=key)
    validate_value(key, value)
    if kind not in Kind.values:
        raise ValidationFailed(f"Unknown secret kind {kind!r}.", code="secret_kind_invalid")
    _require_project(project_id)
    if (
        not SecretMeta.objects.filter(project_id=project_id, key=key).exists()
        and SecretMeta.objects.filter(project_id=project_id).count() >= SECRETS_PER_PROJECT
    ):
        raise ValidationFailed(
            f"A project holds at most {SECRETS_PER_PROJECT} secrets; delete one first.",
            code="too_many_secrets",
            extra={"limit": SECRETS_PER_PROJECT},
        )
    store = get_store()
    meta, _ = _locked_meta(project_id=project_id, key=key, kind=kind, actor=actor)
    action = "updated" if meta.filled else "set"
    synced = store.put(project_scope(project_id), key, value)
    now = timezone.now()
    # synced_at: when the store last wrote it everywhere it keeps it (None: a copy is still due).
    meta.filled, meta.length, meta.store = True, len(value), store.name
    meta.synced_at = None if synced is False else now
    meta.save(update_fields=["filled", "length", "store", "synced_at", "updated_at"])
    _audit(meta, action=action, actor=actor, detail=f"{len(value)} characters, {store.name}")
    log.info("secret_put", project_id=project_id, key=key, action=action, actor=actor, store=store.name)
    transaction.on_commit(lambda: current_app.send_task(task_names.SECRETS_PROVIDED, kwargs={"project_id": project_id}))
    return meta


@transaction.atomic
def secret_delete(*, project_id: int, key: str, actor: str) -> SecretMeta:
    """Forget a secret's value. Its row stays, unfilled (the audit trail and, for a variable of
    the contract, the fact that it is expected); deleting an unfilled secret changes nothing."""
    validate_key(key)
    _require_project(project_id)
    meta = SecretMeta.objects.select_for_update().filter(project_id=project_id, key=key).first()
    if meta is None:
        raise NotFound(f"The project has no secret {key}.", code="secret_not_found")
    if not meta.filled:
        return meta
    store = get_store(meta.store)
    store.delete(project_scope(project_id), key)
    meta.filled, meta.length, meta.synced_at = False, 0, timezone.now()
    meta.save(update_fields=["filled", "length", "synced_at", "updated_at"])
    _audit(meta, action="deleted", actor=actor)
    log.info("secret_deleted", project_id=project_id, key=key, actor=actor)
    return meta


@transaction.atomic
def secret_generate(*, project_id: int, key: str, actor: str = "system") -> SecretMeta:
    """An infra secret (a database password, a signing key): generated once with
    ``secrets.token_urlsafe(32)`` and never again while its value is in the store."""
    validate_key(key)
    _require_project(project_id)
    store = get_store()
    meta, _ = _locked_meta(project_id=project_id, key=key, kind=Kind.INFRA, actor=actor)
    scope = project_scope(project_id)
    if meta.filled and (not store.readable or store.get(scope, key) is not None):
        return meta
    value = secrets.token_urlsafe(32)
    synced = store.put(scope, key, value)
    meta.filled, meta.length, meta.store = True, len(value), store.name
    meta.synced_at = None if synced is False else timezone.now()
    meta.save(update_fields=["filled", "length", "store", "synced_at", "updated_at"])
    _audit(meta, action="generated", actor=actor, detail=f"{len(value)} characters, {store.name}")
    log.info("secret_generated", project_id=project_id, key=key, actor=actor)
    return meta


def secrets_sync(*, project_id: int) -> int:
    """Write the project's values still due to their store's other copy (``github_actions``: put
    before the project had its repository); returns how many were synced. The Preparer calls it
    once the repository exists."""
    count = 0
    for meta in SecretMeta.objects.filter(project_id=project_id, filled=True, synced_at__isnull=True):
        store = get_store(meta.store)
        sync = getattr(store, "sync", None)
        if sync is not None and sync(project_scope(project_id), meta.key):
            SecretMeta.objects.filter(id=meta.id, synced_at__isnull=True).update(synced_at=timezone.now())
            _audit(meta, action="synced", actor="system", detail=store.name)
            count += 1
    return count


def secrets_rotate() -> int:
    """Re-encrypt every stored value under the newest key (SECRETS_ENCRYPTION_KEY="NEW,OLD");
    returns how many values were rewritten. Row by row, each a compare-and-set."""
    store = get_store()
    rotate = getattr(store, "rotate", None)
    if rotate is None:
        raise PermanentError(f"The {store.name} store has no keys of ours to rotate.", code="rotate_unsupported")
    count = rotate()
    log.info("secrets_rotated", store=store.name, count=count)
    return count


# --- a release's environment ----------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseEnvironment:
    """The values of a release's environment (in memory only), and the user secrets missing."""

    values: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # never the values, should this object end up in a log line
        return f"ReleaseEnvironment(names={sorted(self.values)}, missing={self.missing})"


@transaction.atomic
def release_environment(*, project_id: int, env: Iterable, computed: dict[str, str]) -> ReleaseEnvironment:
    """Every variable of the env contract (``ProjectSpec.env``) with its value:

    - ``literal``: the contract's own value; ``derived``: from ``computed`` (APP_NAME,
      PUBLIC_URL, ..., given by the Deployer; one it does not give is a PermanentError);
    - ``generated_secret``: generated once (``secret_generate``), then read;
    - ``user_secret``: read from the store, or listed in ``missing``;
    - ``bot_token``: skipped (the Deployer adds the bot's token).

    Every user and infra variable gets a SecretMeta row (unfilled while missing), so the person
    and the API see what is expected. The person's other filled user secrets (not in the
    contract) are included too. Calling it twice gives the same values.
    """
    _require_project(project_id)
    store = get_store()
    scope = project_scope(project_id)
    values: dict[str, str] = {}
    missing: list[str] = []
    contract: set[str] = set()
    for var in env:
        name, source = var.name, var.source
        contract.add(name)
        if source == "literal":
            values[name] = var.value or ""
        elif source == "derived":
            if name not in computed:
                raise PermanentError(
                    f"The variable {name} is derived, but the deployer computes only {', '.join(sorted(computed))}.",
                    code="derived_variable_unknown",
                    extra={"name": name},
                )
            values[name] = computed[name]
        elif source == "generated_secret":
            secret_generate(project_id=project_id, key=name)
            value = store.get(scope, name)
            if value is None:  # a write-only store: the release cannot be given it from here
                raise PermanentError(
                    f"The {store.name} store cannot give back {name}.", code="secret_unreadable", extra={"name": name}
                )
            values[name] = value
        elif source == "user_secret":
            validate_key(name)
            meta, _ = SecretMeta.objects.get_or_create(
                project_id=project_id, key=name, defaults={"kind": Kind.USER, "created_by": "system"}
            )
            value = store.get(scope, name) if store.readable else None
            if value is None:
                missing.append(name)
                if meta.filled:  # the store lost it: the metadata says so from now on
                    SecretMeta.objects.filter(id=meta.id).update(filled=False, length=0, updated_at=timezone.now())
            else:
                values[name] = value
        elif source == "bot_token":
            continue
        else:
            raise PermanentError(
                f"The variable {name} has an unknown source {source!r}.",
                code="env_source_unknown",
                extra={"name": name},
            )
    extra_keys = (
        SecretMeta.objects.filter(project_id=project_id, kind=Kind.USER, filled=True)
        .exclude(key__in=contract)
        .values_list("key", flat=True)
    )
    for name in extra_keys:
        value = store.get(scope, name) if store.readable else None
        if value is not None:
            values[name] = value
    return ReleaseEnvironment(values=values, missing=missing)
