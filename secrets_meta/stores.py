"""Secret stores: where secret values live. One protocol, chosen by name, so a second store
(GitHub Actions secrets: write-only) can be added without touching callers.

A value is addressed by a `scope` (its owner: `project:<id>`, `bots`) and a `name`. Values are
never logged, never put in an exception message, and never leave this module except as the
return value of `get` (to the Deployer, to build a release's environment in memory).
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from pathlib import Path
from typing import Protocol

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Max

from config import github
from config.errors import PermanentError
from projects.models import Project
from secrets_meta import redaction
from secrets_meta.models import SecretValue

log = structlog.get_logger(__name__)


class SecretStoreError(PermanentError):
    """A store could not do what was asked (the message names the secret, never its value)."""

    code = "secret_store_error"


class SecretStore(Protocol):
    name: str
    # Whether values can be read back (the vault: yes; GitHub Actions secrets: write-only).
    readable: bool

    def put(self, scope: str, name: str, value: str) -> bool | None:
        """Store the value; False if a copy it keeps elsewhere could not be written yet."""
        ...

    def get(self, scope: str, name: str) -> str | None: ...

    def delete(self, scope: str, name: str) -> None: ...

    def names(self, scope: str) -> list[str]: ...

    def version(self, scope: str) -> str:
        """A marker that changes whenever a value of the scope is put or deleted (cheap: no
        value is read), so a process can tell whether what it learnt of the scope is current."""
        ...


def project_scope(project_id: int) -> str:
    return f"project:{project_id}"


BOTS_SCOPE = "bots"


def redaction_name(scope: str, name: str) -> str:
    """How a value is shown once redacted: its own name, or the bot token's for the bot pool."""
    return "TELEGRAM_BOT_TOKEN" if scope == BOTS_SCOPE else name


_key_lock = threading.Lock()


def _keys() -> list[bytes]:
    """The vault's keys, newest first: from SECRETS_ENCRYPTION_KEY, or (embedded default) a key
    file created once in FACTORY_HOME with mode 0600."""
    if settings.SECRETS_ENCRYPTION_KEY:
        keys = [k.strip().encode() for k in settings.SECRETS_ENCRYPTION_KEY.split(",") if k.strip()]
    else:
        path = Path(settings.SECRETS_KEY_FILE or Path(settings.FACTORY_HOME) / "secrets.key")
        with _key_lock:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(Fernet.generate_key() + b"\n")
                log.warning("secrets_key_file_created", path=path.name, hint="set SECRETS_ENCRYPTION_KEY in production")
            keys = [k.strip() for k in path.read_bytes().split(b"\n") if k.strip()]
    try:
        for key in keys:
            Fernet(key)
    except ValueError as exc:
        raise ImproperlyConfigured(
            "SECRETS_ENCRYPTION_KEY must be Fernet keys (32 url-safe base64 bytes), comma-separated."
        ) from exc
    if not keys:
        raise ImproperlyConfigured("SECRETS_ENCRYPTION_KEY holds no key.")
    return keys


class VaultStore:
    """Values encrypted at rest with Fernet (MultiFernet: the first key encrypts, every key
    decrypts), kept in the database as `SecretValue` rows."""

    name = "vault"
    readable = True

    def __init__(self, keys: list[bytes] | None = None) -> None:
        self._given_keys = keys

    @cached_property
    def _fernet(self) -> MultiFernet:
        """Built when a value is first encrypted or decrypted (names and versions need no key)."""
        return MultiFernet([Fernet(k) for k in (self._given_keys or _keys())])

    def put(self, scope: str, name: str, value: str) -> None:
        redaction.register(redaction_name(scope, name), value)
        token = self._fernet.encrypt(value.encode()).decode()
        SecretValue.objects.update_or_create(scope=scope, name=name, defaults={"ciphertext": token})

    def get(self, scope: str, name: str) -> str | None:
        row = SecretValue.objects.filter(scope=scope, name=name).only("ciphertext").first()
        if row is None:
            return None
        value = self._decrypt(scope, name, row.ciphertext)
        redaction.register(redaction_name(scope, name), value)
        return value

    def _decrypt(self, scope: str, name: str, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            # `from None`: the cause would only repeat the ciphertext's details.
            raise SecretStoreError(
                f"The secret {name} of {scope} cannot be decrypted with the configured keys "
                "(was SECRETS_ENCRYPTION_KEY changed without keeping the old key?).",
                code="secret_undecryptable",
                extra={"scope": scope, "name": name},
            ) from None

    def delete(self, scope: str, name: str) -> None:
        SecretValue.objects.filter(scope=scope, name=name).delete()

    def names(self, scope: str) -> list[str]:
        return list(SecretValue.objects.filter(scope=scope).order_by("name").values_list("name", flat=True))

    def version(self, scope: str) -> str:
        found = SecretValue.objects.filter(scope=scope).aggregate(count=Count("id"), latest=Max("updated_at"))
        return f"{found['count']}:{found['latest'].isoformat() if found['latest'] else ''}"

    def rotate(self) -> int:
        """Re-encrypt every value under the newest key; returns how many rows were rewritten.

        Each row is rewritten by compare-and-set on the ciphertext it read, so a value put
        meanwhile is never overwritten by the old one re-encrypted."""
        count = 0
        for row in SecretValue.objects.only("id", "scope", "name", "ciphertext").iterator():
            try:
                fresh = self._fernet.rotate(row.ciphertext.encode()).decode()
            except InvalidToken:
                raise SecretStoreError(
                    f"The secret {row.name} of {row.scope} cannot be decrypted with any configured key; "
                    "keep the key it was written with in SECRETS_ENCRYPTION_KEY (after the new one).",
                    code="secret_undecryptable",
                    extra={"scope": row.scope, "name": row.name},
                ) from None
            count += SecretValue.objects.filter(id=row.id, ciphertext=row.ciphertext).update(ciphertext=fresh)
        return count


class GitHubActionsStore(VaultStore):
    """The vault, and a copy of each project value in its GitHub repository's Actions secrets
    (for people who deploy from Actions): encrypted for the repository's public key in a sealed
    box (PyNaCl, through PyGithub's ``create_secret``), write-only on GitHub. Values are read
    back from the vault (the Deployer needs them). ``put`` returns False when the project has no
    repository on GitHub yet: the value is synced once the Preparer made it
    (``services.secrets_sync``). Other scopes (the bot pool) stay in the vault alone."""

    name = "github_actions"
    readable = True

    def put(self, scope: str, name: str, value: str) -> bool:
        super().put(scope, name, value)
        return self._sync(scope, name, value)

    def sync(self, scope: str, name: str) -> bool:
        value = super().get(scope, name)
        return value is not None and self._sync(scope, name, value)

    def delete(self, scope: str, name: str) -> None:
        super().delete(scope, name)
        full = _repository(scope)
        if full:
            try:
                with github.errors(f"deleting the Actions secret {name} of {full}"):
                    github.client().get_repo(full).delete_secret(name)
            except github.GitHubNotFound:
                pass  # never synced, or gone already

    def _sync(self, scope: str, name: str, value: str) -> bool:
        full = _repository(scope)
        if not full:
            return False
        with github.errors(f"writing the Actions secret {name} of {full}"):
            github.client().get_repo(full).create_secret(name, value, secret_type="actions")
        log.info("secret_synced", store=self.name, repository=full, name=name)
        return True


def _repository(scope: str) -> str | None:
    """The project's repository on GitHub (``<org>/<slug>``), once the factory made it."""
    if not scope.startswith("project:") or not github.configured():
        return None
    project = Project.objects.filter(id=int(scope.split(":", 1)[1])).values("slug", "repo_url").first()
    if not project or not project["slug"] or not project["repo_url"].startswith("http"):
        return None
    return f"{settings.GITHUB_ORG}/{project['slug']}"


_STORES = {"vault": VaultStore, "github_actions": GitHubActionsStore}


def get_store(name: str | None = None) -> SecretStore:
    """The store called `name` (default: SECRET_STORE), built on each call (cheap; keys may rotate)."""
    name = name or settings.SECRET_STORE
    try:
        return _STORES[name]()
    except KeyError:
        raise ImproperlyConfigured(f"SECRET_STORE {name!r} is not a known store ({', '.join(_STORES)}).") from None
