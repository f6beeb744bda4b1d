"""The Bot API edge: the one module that uses pyTelegramBotAPI.

The TeleBot is built in exactly one function (``_bot``), and ``apihelper.API_URL`` is set in
exactly one place (``_configure``, from settings.TELEGRAM_API_URL), on every call, never at
import. What goes in and out are our own values (ints, strings, dicts of the raw JSON, the
dataclasses below): no telebot object leaves this module.

Errors are sorted here, once:

- 429 → ``RateLimited`` (transient) carrying Telegram's ``retry_after``;
- 403 (bot blocked, user deactivated, kicked) and 400 "chat not found" → ``ChatUnavailable``;
- 400 "can't parse entities" → ``FormattingRejected``;
- 5xx, timeouts, connection errors, unreadable answers → ``TransientError``;
- 401/404 (the token) → ``PermanentError`` ``telegram_unauthorized``; 409 (getUpdates: another
  poller, a webhook set) → ``telegram_conflict``; any other 4xx → ``PermanentError``.

``TransientError.extra["maybe_delivered"]`` says whether Telegram may have acted on the call
although we got no answer (a read timeout, a connection lost after the request went out, a 5xx
from Telegram's front end): the delivery records that, because a retry may then duplicate it.
No error message carries the token (requests' own messages contain the URL, which does):
messages are written here from the status and Telegram's description only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
import structlog
from django.conf import settings

from config.errors import PermanentError, TransientError
from secrets_meta import redaction

log = structlog.get_logger(__name__)
T = TypeVar("T")


class RateLimited(TransientError):
    """Telegram says: too many requests, wait ``retry_after`` seconds."""

    code = "telegram_rate_limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, extra={"retry_after": retry_after, "maybe_delivered": False})
        self.retry_after = retry_after


class ChatUnavailable(PermanentError):
    """The chat takes no more messages from us (bot blocked, chat deleted, user deactivated)."""

    code = "telegram_chat_unavailable"


class FormattingRejected(PermanentError):
    """Telegram could not parse the message's formatting (HTML entities)."""

    code = "telegram_formatting_rejected"


@dataclass(frozen=True)
class BotIdentity:
    id: int
    username: str
    first_name: str


# --- the calls ---------------------------------------------------------------------------
def send_message(chat_id: int, text: str, *, html: bool = False, reply_to: int | None = None) -> int:
    """Send a text message; return Telegram's message id."""
    from telebot import types

    bot = _bot()
    reply = types.ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
    message = _call(
        "sendMessage",
        lambda: bot.send_message(
            chat_id,
            text,
            parse_mode="HTML" if html else None,
            reply_parameters=reply,
            timeout=settings.TELEGRAM_REQUEST_TIMEOUT_SECONDS,
        ),
    )
    return int(message.message_id)


def delete_message(chat_id: int, message_id: int) -> None:
    bot = _bot()
    _call(
        "deleteMessage",
        lambda: bot.delete_message(chat_id, message_id, timeout=settings.TELEGRAM_REQUEST_TIMEOUT_SECONDS),
    )


def get_me() -> BotIdentity:
    bot = _bot()
    me = _call("getMe", bot.get_me)
    return BotIdentity(id=int(me.id), username=me.username or "", first_name=me.first_name or "")


def get_updates(*, offset: int | None, timeout: int, limit: int | None = None) -> list[Any]:
    """One getUpdates (long polling ``timeout`` seconds): the raw updates, as JSON values.

    Raw on purpose: the handlers validate each one with pydantic, and one malformed update must
    not cost the others (telebot's own parsing would fail the whole batch).
    """
    from telebot import apihelper

    token = _configure()
    found = _call(
        "getUpdates",
        lambda: apihelper.get_updates(token, offset=offset, limit=limit, long_polling_timeout=max(1, timeout)),
    )
    return list(found or [])


def set_webhook(*, url: str, secret_token: str) -> None:
    bot = _bot()
    _call("setWebhook", lambda: bot.set_webhook(url=url, secret_token=secret_token, allowed_updates=["message"]))


def delete_webhook() -> None:
    bot = _bot()
    _call("deleteWebhook", bot.delete_webhook)


# --- calls as another bot (the pool's, a person's own): the token is given explicitly ---------
# The same error sorting; the token is never put in a message (Telegram's descriptions do not
# carry it, and requests' own messages, which do, are never used).
@dataclass(frozen=True)
class WebhookInfo:
    url: str
    pending_update_count: int


def bot_get_me(token: str) -> BotIdentity:
    """getMe as the bot with this token."""
    from telebot import apihelper

    _point_at_api(token)
    me = _call("getMe", lambda: apihelper.get_me(token))
    return BotIdentity(id=int(me["id"]), username=me.get("username") or "", first_name=me.get("first_name") or "")


def bot_get_webhook_info(token: str) -> WebhookInfo:
    from telebot import apihelper

    _point_at_api(token)
    info = _call("getWebhookInfo", lambda: apihelper.get_webhook_info(token))
    return WebhookInfo(url=info.get("url") or "", pending_update_count=int(info.get("pending_update_count") or 0))


def bot_get_updates(token: str, *, timeout: int = 0, limit: int = 1) -> list[Any]:
    """getUpdates with no offset (so nothing is confirmed: the updates stay for the bot) and no
    wait unless ``timeout``: a probe whether another program polls the bot (409)."""
    from telebot import apihelper

    _point_at_api(token)
    # telebot replaces a long-polling timeout of 0 by its default (10 s): pass it to the call itself.
    params = {"limit": limit, "long_polling_timeout": timeout}
    found = _call("getUpdates", lambda: apihelper._make_request(token, "getUpdates", params=params))
    return list(found or [])


def bot_delete_webhook(token: str) -> None:
    from telebot import apihelper

    _point_at_api(token)
    _call("deleteWebhook", lambda: apihelper.delete_webhook(token))


def bot_delete_my_commands(token: str) -> None:
    from telebot import apihelper

    _point_at_api(token)
    _call("deleteMyCommands", lambda: apihelper.delete_my_commands(token))


# --- the client ----------------------------------------------------------------------------
def _point_at_api(token: str | None = None, name: str = "TELEGRAM_BOT_TOKEN") -> None:
    """Point telebot at the configured Bot API: the one place API_URL is set. The token about to
    be used is registered for redaction: the HTTP libraries log request URLs, which carry it."""
    from telebot import apihelper

    redaction.register(name, token)
    apihelper.API_URL = settings.TELEGRAM_API_URL


def _configure() -> str:
    """Point telebot at the configured Bot API; return the factory bot's token."""
    token = settings.TELEGRAM_BOT_TOKEN
    if not token:
        raise PermanentError(
            "TELEGRAM_BOT_TOKEN is not set, so the factory cannot talk to Telegram.", code="telegram_not_configured"
        )
    _point_at_api(token, "FACTORY_TELEGRAM_BOT_TOKEN")
    return token


def _bot():
    """The one place a TeleBot is built. Cheap; built per call so settings always apply."""
    import telebot

    token = _configure()
    try:
        return telebot.TeleBot(token, threaded=False)
    except ValueError as exc:  # telebot's token format check; its message does not echo the token
        raise PermanentError(f"TELEGRAM_BOT_TOKEN is malformed: {exc}.", code="telegram_bad_token") from exc


def _call(method: str, fn: Callable[[], T]) -> T:
    from telebot import apihelper

    try:
        return fn()
    except apihelper.ApiTelegramException as exc:
        raise sort_api_error(
            method, exc.error_code, exc.description, (exc.result_json or {}).get("parameters") or {}
        ) from None
    except apihelper.ApiHTTPException as exc:  # a non-JSON answer with an error status
        status = getattr(exc.result, "status_code", 0)
        raise sort_api_error(method, status, getattr(exc.result, "reason", "") or "no JSON body", {}) from None
    except apihelper.ApiInvalidJSONException:
        raise TransientError(
            f"Telegram answered {method} with something that is not JSON.",
            code="telegram_bad_answer",
            extra={"maybe_delivered": True},
        ) from None
    except requests.ConnectTimeout:
        raise TransientError(
            f"Telegram could not be reached for {method} (ConnectTimeout).",
            code="telegram_unreachable",
            extra={"maybe_delivered": False},
        ) from None
    except requests.Timeout:
        raise TransientError(
            f"Telegram did not answer {method} in time.", code="telegram_timeout", extra={"maybe_delivered": True}
        ) from None
    except requests.ConnectionError as exc:
        # Refused or unresolvable: nothing went out. A connection lost mid-call: it may have.
        sent = not _never_connected(exc)
        raise TransientError(
            f"Telegram could not be reached for {method} ({type(exc).__name__}).",
            code="telegram_unreachable",
            extra={"maybe_delivered": sent},
        ) from None
    except requests.RequestException as exc:
        raise TransientError(
            f"Telegram could not be reached for {method} ({type(exc).__name__}).",
            code="telegram_unreachable",
            extra={"maybe_delivered": True},
        ) from None


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the connection was never made (so the request cannot have reached Telegram)."""
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    reason = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", reason)
    return isinstance(inner, (NewConnectionError, NameResolutionError, ConnectionRefusedError))


def sort_api_error(method: str, status: int, description: str, parameters: dict[str, Any]):
    """The one mapping from a Bot API error to our error family."""
    text = f"Telegram refused {method}: {status} {description}".strip()
    lowered = (description or "").lower()
    if status == 429:
        try:
            retry_after = max(1, int(parameters.get("retry_after") or 1))
        except (TypeError, ValueError):
            retry_after = 1
        return RateLimited(text, retry_after=retry_after)
    if status == 403 or (status == 400 and ("chat not found" in lowered or "user not found" in lowered)):
        return ChatUnavailable(text)
    if status == 400 and "can't parse entities" in lowered:
        return FormattingRejected(text)
    if status >= 500 or status == 0:
        # A 5xx may come from Telegram's front end after the back end acted: it may be delivered.
        return TransientError(text, code="telegram_unavailable", extra={"maybe_delivered": True})
    if status == 401 or status == 404:
        return PermanentError(
            f"Telegram does not accept the bot token ({status} {description}).", code="telegram_unauthorized"
        )
    if status == 409:  # getUpdates: another poller, or a webhook is set
        return PermanentError(text, code="telegram_conflict")
    return PermanentError(text, code="telegram_refused")
