"""The one GitHub client: settings → a PyGithub ``Github`` (a token, or a GitHub App's
installation token minted and cached until shortly before it expires), and GitHub's errors
sorted once into the AppError family.

Used by the code host (``orchestrator.codehost.github``) and the ``github_actions`` secret store
(``secrets_meta.stores``); PyGithub objects never leave those modules. Every REST call goes
through PyGithub; git over HTTPS gets the same token as an ``Authorization`` header given to git
through its environment (``git_auth_env``), never in a URL or on a command line.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
import structlog
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from github import Auth, Github, GithubException, GithubIntegration

from config.errors import PermanentError, TransientError

log = structlog.get_logger(__name__)

# An installation token lives an hour; a new one is minted this long before the old one expires.
TOKEN_REFRESH_MARGIN = timedelta(minutes=5)


class GitHubError(PermanentError):
    """GitHub refused for good (a 4xx that is not a rate limit); the message says what and why."""

    code = "github_error"


class GitHubNotFound(GitHubError):
    code = "github_not_found"


class GitHubForbidden(GitHubError):
    code = "github_forbidden"


class GitHubUnprocessable(GitHubError):
    code = "github_unprocessable"


class GitHubUnavailable(TransientError):
    """5xx, a timeout, a refused connection, or a (secondary) rate limit: try again later.
    ``retry_after`` is GitHub's own hint in seconds when it gave one."""

    code = "github_unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int | None = None):
        super().__init__(message, code=code, extra={"retry_after": retry_after} if retry_after else None)
        self.retry_after = retry_after


def configured() -> bool:
    """Whether GitHub is configured (an organization and a token or an App)."""
    return bool(settings.GITHUB_ORG and (settings.GITHUB_TOKEN or settings.GITHUB_APP_ID))


def git_base_url() -> str:
    """Where git speaks smart HTTP: GITHUB_GIT_URL, else derived from the API's URL
    (``https://api.github.com`` → ``https://github.com``; Enterprise ``<host>/api/v3`` → ``<host>``)."""
    if settings.GITHUB_GIT_URL:
        return settings.GITHUB_GIT_URL.rstrip("/")
    api = settings.GITHUB_API_URL.rstrip("/")
    if api.endswith("/api/v3"):
        return api[: -len("/api/v3")]
    return api.replace("://api.", "://", 1)


@dataclass
class _Minted:
    token: str
    expires_at: datetime


_tokens: dict[tuple[str, str, str], _Minted] = {}
_tokens_lock = threading.Lock()


def _private_key() -> str:
    if settings.GITHUB_APP_PRIVATE_KEY:
        return settings.GITHUB_APP_PRIVATE_KEY.replace("\\n", "\n")
    if settings.GITHUB_APP_PRIVATE_KEY_PATH:
        try:
            return Path(settings.GITHUB_APP_PRIVATE_KEY_PATH).read_text()
        except OSError as exc:
            raise ImproperlyConfigured(f"GITHUB_APP_PRIVATE_KEY_PATH cannot be read: {exc.strerror}") from None
    raise ImproperlyConfigured("GITHUB_APP_ID is set without GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_PATH.")


def token() -> str:
    """The token every call uses: GITHUB_TOKEN, or the App installation's token, minted through
    ``POST /app/installations/<id>/access_tokens`` (a JWT signed with the App's key) and reused
    by this process until TOKEN_REFRESH_MARGIN before it expires."""
    if settings.GITHUB_TOKEN:
        return settings.GITHUB_TOKEN
    if not (settings.GITHUB_APP_ID and settings.GITHUB_APP_INSTALLATION_ID):
        raise ImproperlyConfigured("GitHub needs GITHUB_TOKEN, or GITHUB_APP_ID with GITHUB_APP_INSTALLATION_ID.")
    key = (settings.GITHUB_API_URL, str(settings.GITHUB_APP_ID), str(settings.GITHUB_APP_INSTALLATION_ID))
    with _tokens_lock:
        minted = _tokens.get(key)
        if minted is None or minted.expires_at - TOKEN_REFRESH_MARGIN <= datetime.now(UTC):
            integration = GithubIntegration(
                auth=Auth.AppAuth(str(settings.GITHUB_APP_ID), _private_key()),
                base_url=settings.GITHUB_API_URL,
                timeout=settings.GITHUB_TIMEOUT,
                retry=None,
            )
            with errors("minting the App's installation token"):
                grant = integration.get_access_token(int(settings.GITHUB_APP_INSTALLATION_ID))
            expires = grant.expires_at or datetime.now(UTC) + timedelta(hours=1)
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            minted = _tokens[key] = _Minted(grant.token, expires)
            log.info("github_installation_token_minted", expires_at=expires.isoformat())
        return minted.token


def client() -> Github:
    """A PyGithub client for one piece of work (cheap: no call is made until it is used).
    PyGithub's own retry is off: a rate limit or a 5xx becomes GitHubUnavailable, and the stage
    retries later instead of a worker sleeping inside a request."""
    return Github(
        auth=Auth.Token(token()),
        base_url=settings.GITHUB_API_URL,
        timeout=settings.GITHUB_TIMEOUT,
        retry=None,
        seconds_between_requests=None,
        seconds_between_writes=settings.GITHUB_SECONDS_BETWEEN_WRITES or None,
    )


def git_auth_env() -> dict[str, str]:
    """Git's configuration through the environment (git ≥ 2.31): the token as an HTTP header
    for the GitHub host only, so it is in no URL, no argv (``ps``) and no remote config."""
    basic = base64.b64encode(f"x-access-token:{token()}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.{git_base_url()}/.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


def _message(exc: GithubException) -> str:
    data = exc.data if isinstance(exc.data, dict) else {}
    message = str(data.get("message") or exc.message or "").strip()
    details = [
        e.get("message") or f"{e.get('resource', '')} {e.get('field', '')} {e.get('code', '')}".strip()
        for e in data.get("errors") or []
        if isinstance(e, dict)
    ]
    return "; ".join([message, *[d for d in details if d]])[:300] or f"HTTP {exc.status}"


def _header(headers: dict | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def sort_error(exc: Exception, doing: str) -> Exception:
    """One GitHub failure as our error: transient (5xx, timeouts, rate limits, secondary rate
    limits) or permanent with a clear message (404, 403, 422, other 4xx)."""
    if isinstance(exc, requests.RequestException):
        return GitHubUnavailable(f"GitHub did not answer while {doing} ({type(exc).__name__}).")
    if not isinstance(exc, GithubException):
        return exc
    status, message = exc.status, _message(exc)
    retry_after = _header(exc.headers, "Retry-After")
    remaining = _header(exc.headers, "X-RateLimit-Remaining")
    if status >= 500:
        return GitHubUnavailable(f"GitHub failed while {doing} (HTTP {status}: {message}).")
    if status in (403, 429) and (retry_after or remaining == "0" or "rate limit" in message.lower()):
        wait = int(retry_after) if retry_after and retry_after.isdigit() else None
        if wait is None and remaining == "0":
            reset = _header(exc.headers, "X-RateLimit-Reset")
            if reset and reset.isdigit():
                wait = max(1, int(reset) - int(datetime.now(UTC).timestamp()))
        return GitHubUnavailable(
            f"GitHub's rate limit was reached while {doing}; trying again later ({message}).",
            code="github_rate_limited",
            retry_after=wait,
        )
    if status == 401:
        return GitHubForbidden(f"GitHub refused the factory's credentials while {doing} ({message}).")
    if status == 403:
        return GitHubForbidden(f"GitHub does not allow the factory to do this ({doing}): {message}.")
    if status == 404:
        return GitHubNotFound(f"GitHub found nothing while {doing} ({message}).")
    if status == 422:
        return GitHubUnprocessable(f"GitHub refused the request while {doing}: {message}.")
    return GitHubError(f"GitHub answered HTTP {status} while {doing}: {message}.")


@contextmanager
def errors(doing: str) -> Iterator[None]:
    """Sort GitHub's errors raised inside the block (see ``sort_error``)."""
    try:
        yield
    except (GithubException, requests.RequestException) as exc:
        raise sort_error(exc, doing) from None
