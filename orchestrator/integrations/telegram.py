"""The Telegram edge for the engine: send and delete messages, ask who the bot is.

A small client around pyTelegramBotAPI, built lazily on each call from settings (never at
import). Its errors are sorted here, once:

- 429 → ``RateLimited`` (transient) carrying Telegram's ``retry_after``;
- 403 (bot blocked, user deactivated, kicked) and 400 "chat not found" → ``ChatUnavailable``;
- 400 "can't parse entities" → ``FormattingRejected``;
- 5xx, timeouts, connection errors, unreadable answers → ``TransientError``;
- any other 4xx → ``PermanentError``.

No telebot object leaves this module, and no error message carries the token (requests' own
messages contain the URL, which does): messages are written here from the status and Telegram's
description only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
import structlog
from django.conf import settings

from config.errors import PermanentError, TransientError

log = structlog.get_logger(__name__)
T = TypeVar("T")


class RateLimited(TransientError):
    """Telegram says: too many requests, wait ``retry_after`` seconds."""

    code = "telegram_rate_limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, extra={"retry_after": retry_after})
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


def send_message(chat_id: int, text: str, *, html: bool = False, reply_to: int | None = None) -> int:
    """Send a text message; return Telegram's message id."""
    from telebot import types

    bot = _bot()
    reply = types.ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
    message = _call("sendMessage", lambda: bot.send_message(
        chat_id, text, parse_mode="HTML" if html else None, reply_parameters=reply,
        timeout=settings.TELEGRAM_REQUEST_TIMEOUT_SECONDS,
    ))
    return int(message.message_id)


def delete_message(chat_id: int, message_id: int) -> None:
    bot = _bot()
    _call("deleteMessage", lambda: bot.delete_message(chat_id, message_id,
                                                      timeout=settings.TELEGRAM_REQUEST_TIMEOUT_SECONDS))


def get_me() -> BotIdentity:
    bot = _bot()
    me = _call("getMe", bot.get_me)
    return BotIdentity(id=int(me.id), username=me.username or "", first_name=me.first_name or "")


def _bot():
    """A client for the configured bot. Cheap to build; built per call so settings always apply."""
    import telebot
    from telebot import apihelper

    token = settings.TELEGRAM_BOT_TOKEN
    if not token:
        raise PermanentError("TELEGRAM_BOT_TOKEN is not set, so the factory cannot write to Telegram.",
                             code="telegram_not_configured")
    apihelper.API_URL = settings.TELEGRAM_API_URL
    try:
        return telebot.TeleBot(token, threaded=False)
    except ValueError as exc:  # telebot's token format check; its message does not echo the token
        raise PermanentError(f"TELEGRAM_BOT_TOKEN is malformed: {exc}.", code="telegram_bad_token") from exc


def _call(method: str, fn: Callable[[], T]) -> T:
    from telebot import apihelper

    try:
        return fn()
    except apihelper.ApiTelegramException as exc:
        raise sort_api_error(method, exc.error_code, exc.description,
                             (exc.result_json or {}).get("parameters") or {}) from None
    except apihelper.ApiHTTPException as exc:  # a non-JSON answer with an error status
        status = getattr(exc.result, "status_code", 0)
        raise sort_api_error(method, status, getattr(exc.result, "reason", "") or "no JSON body", {}) from None
    except apihelper.ApiInvalidJSONException:
        raise TransientError(f"Telegram answered {method} with something that is not JSON.",
                             code="telegram_bad_answer") from None
    except requests.Timeout:
        raise TransientError(f"Telegram did not answer {method} in time.", code="telegram_timeout") from None
    except requests.RequestException as exc:
        raise TransientError(f"Telegram could not be reached for {method} ({type(exc).__name__}).",
                             code="telegram_unreachable") from None


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
        return TransientError(text, code="telegram_unavailable")
    if status == 401 or status == 404:
        return PermanentError(f"Telegram does not accept the bot token ({status} {description}).",
                              code="telegram_unauthorized")
    return PermanentError(text, code="telegram_refused")
