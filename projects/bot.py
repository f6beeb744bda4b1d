"""The Telegram bot: an interface like the API. Parse the message, call one service, render the answer.

Long polling (``manage.py runbot``) and the webhook (``projects/telegram_webhook.py``) hand raw
updates to ``handle_update``, which validates them with pydantic before anything else: a
malformed update is logged and ignored, and nothing changes. Then pyTelegramBotAPI dispatches
the message to the handlers below.

Who may do what: a Telegram user is someone only through a TelegramAccount. Unknown users are
refused with their Telegram id shown, except ``/start <invite code>`` (fail closed). Only private
chats are served.

Replies to what a person wrote are sent at once, best effort: one that cannot be delivered is
logged, and the person can simply ask again. What the system owes a person unasked (stage
updates, questions, the result) goes through ``projects.notifications``: recorded and retried.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import requests
import structlog
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from config.errors import AppError, ValidationFailed
from projects import people, runs, services
from projects.models import TelegramAccount

log = structlog.get_logger(__name__)

MAX_TEXT = 4096
HELP = (
    "I build and deploy services from a description. Just write what you want, e.g. "
    "“a web service that greets people by name”.\n\n"
    "/new <description> – start a project\n"
    "/projects – your projects\n"
    "/status [project] – a project's run, stage, cost, live URL and health\n"
    "/cancel [project] – stop a run in progress\n"
    "/answer <text> – answer the question I asked you (or simply reply to it)\n"
    "/budget <dollars> – raise the budget of a run that waits for it\n"
    "/help – this message"
)
NOT_A_QUESTION = ("That message is not a question waiting for an answer (it may have been answered already). "
                  "To start a new project, send /new <description>.")


# --- the edge: what an update must look like -------------------------------------------
class _Edge(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class TgUser(_Edge):
    id: StrictInt
    is_bot: StrictBool = False
    first_name: str = Field(default="", max_length=256)
    username: str | None = Field(default=None, max_length=64)


class TgChat(_Edge):
    id: StrictInt
    type: Literal["private", "group", "supergroup", "channel"]


class TgReplied(_Edge):
    message_id: StrictInt
    from_: TgUser | None = Field(default=None, alias="from")


class TgMessage(_Edge):
    message_id: StrictInt
    date: StrictInt
    chat: TgChat
    from_: TgUser | None = Field(default=None, alias="from")
    text: str | None = Field(default=None, max_length=MAX_TEXT)
    reply_to_message: TgReplied | None = None


class TgUpdate(_Edge):
    update_id: StrictInt
    message: TgMessage | None = None


def _errors(exc: ValidationError) -> list[str]:
    """Where an update is wrong, without echoing its content."""
    return [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]]


def handle_update(raw: Any) -> bool:
    """Validate one raw update and dispatch it to the handlers. False when it was ignored."""
    try:
        update = TgUpdate.model_validate(raw)
    except ValidationError as exc:
        log.warning("telegram_update_rejected", errors=_errors(exc))
        return False
    if update.message is None:
        log.info("telegram_update_ignored", update_id=update.update_id, reason="not a new message")
        return False
    from telebot import types

    try:
        parsed = types.Update.de_json(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("telegram_update_rejected", update_id=update.update_id, errors=[type(exc).__name__])
        return False
    build_bot().process_new_updates([parsed])
    return True


# --- the bot --------------------------------------------------------------------------
class NotConfigured(AppError):
    code = "telegram_not_configured"


def _token() -> str:
    if not settings.TELEGRAM_BOT_TOKEN:
        raise NotConfigured("TELEGRAM_BOT_TOKEN is not set.")
    return settings.TELEGRAM_BOT_TOKEN


def build_bot():
    """A TeleBot with the handlers, for the configured token. Cheap; built per use, never at import."""
    import telebot
    from telebot import apihelper, util

    apihelper.API_URL = settings.TELEGRAM_API_URL
    try:
        bot = telebot.TeleBot(_token(), threaded=False)
    except ValueError as exc:  # telebot's token format check; its message does not echo the token
        raise NotConfigured(f"TELEGRAM_BOT_TOKEN is malformed: {exc}.") from exc
    h = _Handlers(bot)
    private = ["private"]
    on = bot.register_message_handler
    on(h.wrap(h.start, known_only=False), commands=["start"], chat_types=private)
    on(h.wrap(h.help), commands=["help"], chat_types=private)
    on(h.wrap(h.new), commands=["new"], chat_types=private)
    on(h.wrap(h.projects), commands=["projects"], chat_types=private)
    on(h.wrap(h.status), commands=["status"], chat_types=private)
    on(h.wrap(h.cancel), commands=["cancel"], chat_types=private)
    on(h.wrap(h.answer), commands=["answer"], chat_types=private)
    on(h.wrap(h.budget), commands=["budget"], chat_types=private)
    on(h.wrap(h.unknown_command), func=lambda m: (m.text or "").startswith("/"), chat_types=private)
    on(h.wrap(h.text), content_types=["text"], chat_types=private)
    on(h.wrap(h.not_text), content_types=[c for c in util.content_type_media if c != "text"], chat_types=private)
    on(h.elsewhere, content_types=util.content_type_media, chat_types=["group", "supergroup", "channel"])
    return bot


@dataclass(frozen=True)
class Incoming:
    message: TgMessage
    sender: TgUser
    account: TelegramAccount | None
    args: str  # what follows the command (or the whole text of a plain message)

    @property
    def user(self):
        return self.account.user  # handlers that run for known people only


def _args(text: str) -> str:
    """What follows a command; the whole text of a plain message."""
    if not text.startswith("/"):
        return text.strip()
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


def refusal(telegram_user_id: int) -> str:
    return (f"Sorry, I only work for people I know. Your Telegram id is {telegram_user_id}. "
            "Send it to an operator to be let in, or send /start <invite code> if you have one.")


class _Handlers:
    def __init__(self, bot):
        self.bot = bot

    def wrap(self, fn: Callable[[Incoming], str | None], *, known_only: bool = True):
        def handler(tg_message) -> None:
            try:
                message = TgMessage.model_validate(tg_message.json)
            except ValidationError as exc:
                log.warning("telegram_message_rejected", errors=_errors(exc))
                return
            sender = message.from_
            if sender is None or sender.is_bot:
                log.info("telegram_message_ignored", reason="no human sender", chat_id=message.chat.id)
                return
            account = people.account_for_telegram_user(telegram_user_id=sender.id)
            if account is not None:
                people.account_seen(account_id=account.id, chat_id=message.chat.id, username=sender.username or "")
            elif known_only:
                log.info("telegram_unknown_user_refused", telegram_user_id=sender.id, handler=fn.__name__)
                self.reply(message, refusal(sender.id))
                return
            try:
                answer = fn(Incoming(message, sender, account, _args(message.text or "")))
            except AppError as exc:
                answer = exc.message
            except Exception:  # a bug: the person hears so, the trace goes to the log
                log.exception("telegram_handler_crashed", handler=fn.__name__, telegram_user_id=sender.id)
                answer = "Something went wrong on my side. Please try again in a minute."
            if answer:
                self.reply(message, answer)

        handler.__name__ = f"handle_{fn.__name__}"
        return handler

    def reply(self, message: TgMessage, text: str) -> None:
        from telebot import apihelper

        try:
            self.bot.send_message(message.chat.id, text[:MAX_TEXT], timeout=settings.TELEGRAM_REQUEST_TIMEOUT_SECONDS)
        except apihelper.ApiException as exc:
            log.warning("telegram_reply_failed", chat_id=message.chat.id, error=str(exc)[:300])
        except requests.RequestException as exc:  # its message holds the URL, and so the token: not logged
            log.warning("telegram_reply_failed", chat_id=message.chat.id, error=type(exc).__name__)

    def elsewhere(self, tg_message) -> None:
        log.info("telegram_message_ignored", reason="not a private chat", chat_type=tg_message.chat.type)

    # --- commands -----------------------------------------------------------------------
    def start(self, inc: Incoming) -> str:
        if inc.account is not None:
            note = " The invite code was not used." if inc.args else ""
            return f"Welcome back, {inc.account.user.username}.{note}\n\n{HELP}"
        if not inc.args:
            return refusal(inc.sender.id)
        account = people.invite_redeem(code=inc.args, telegram_user_id=inc.sender.id, chat_id=inc.message.chat.id,
                                       username=inc.sender.username or "")
        return f"Welcome! You're in as {account.user.username}.\n\n{HELP}"

    def help(self, inc: Incoming) -> str:
        return HELP

    def new(self, inc: Incoming) -> str:
        project, run = services.project_create(owner=inc.user, description=inc.args)
        return (f"Got it: project #{project.id}, run #{run.id} is queued. I'll write to you as it moves through "
                f"planning, code, tests and deploy. /status {project.id} shows where it is.")

    def text(self, inc: Incoming) -> str:
        if inc.message.reply_to_message is not None:
            escalation = self._replied_escalation(inc)
            if escalation is None:
                return NOT_A_QUESTION
            return self._answer(inc, escalation, action="guidance", answer=inc.args)
        return self.new(inc)

    def projects(self, inc: Incoming) -> str:
        found = people.projects_of(user=inc.user)
        if not found:
            return "You have no projects yet. Describe a service to start one."
        lines = []
        for project in found:
            run = project.latest_runs[0] if project.latest_runs else None
            line = f"#{project.id} {project.name or '(not planned yet)'}"
            line += f" ({project.slug})" if project.slug else ""
            if run is not None:
                line += f" – {run.get_status_display().lower()}"
                if run.status in ("queued", "running", "waiting_human") and run.current_stage:
                    line += f" at {run.current_stage}"
            if project.live_deployments:
                line += f"; live at {project.live_deployments[0].url}"
            lines.append(line)
        return "Your projects:\n" + "\n".join(lines)

    def status(self, inc: Incoming) -> str:
        status = people.project_status(user=inc.user, ref=inc.args or None)
        project, run = status.project, status.run
        lines = [f"{project.name or 'Project'} (#{project.id}{', ' + project.slug if project.slug else ''})"]
        if run is not None:
            line = f"Run #{run.id}: {run.get_status_display().lower()}"
            if run.current_stage:
                line += f", stage {run.current_stage}"
            if run.current_stage in ("developer", "tester"):
                line += f", iteration {run.iteration} of {run.max_iterations}"
            lines.append(line)
            if run.status in ("failed", "cancelled") and run.error_message:
                lines.append(f"Reason: {run.error_message[:500]}")
        lines.append(f"Cost so far: ${status.cost_usd:.2f}")
        if status.live is not None:
            since = status.live.live_at.strftime("%Y-%m-%d %H:%M UTC") if status.live.live_at else "?"
            lines.append(f"Live: {status.live.url} (since {since}), {self._health(project.id)}")
        elif status.last_deployment is not None:
            lines.append(f"Not live. Last deploy: {status.last_deployment.status}"
                         + (f" ({status.last_deployment.error[:200]})" if status.last_deployment.error else ""))
        else:
            lines.append("Not deployed yet.")
        return "\n".join(lines)

    @staticmethod
    def _health(project_id: int) -> str:
        # The bot is an interface: like an admin action, it may ask the engine for a read-only probe.
        from projects.health import release_health

        health = release_health(project_id=project_id)
        if health is None:
            return "health unknown"
        return "healthy" if health.ok else f"unhealthy: {health.detail}"

    def cancel(self, inc: Incoming) -> str:
        if inc.message.reply_to_message is not None and not inc.args:
            escalation = self._replied_escalation(inc)
            if escalation is not None:
                return self._answer(inc, escalation, action="cancel")
        run = people.run_active(user=inc.user, ref=inc.args or None)
        runs.run_cancel(run_id=run.id, user=inc.user)
        return f"Run #{run.id} of {run.project} is cancelled. I'll confirm when it has stopped."

    def answer(self, inc: Incoming) -> str:
        escalation = self._escalation(inc)
        if escalation is None:
            return "Nothing is waiting for your answer right now."
        if not inc.args:
            return "Write your answer after /answer, e.g. /answer use the standard library only."
        return self._answer(inc, escalation, action="guidance", answer=inc.args)

    def budget(self, inc: Incoming) -> str:
        escalation = self._escalation(inc)
        if escalation is None:
            return "No run is waiting for more budget right now."
        try:
            amount = Decimal(inc.args.replace("$", "").replace("+", "").strip())
        except InvalidOperation as exc:
            raise ValidationFailed("Give the amount in dollars, e.g. /budget 5.", code="bad_budget") from exc
        return self._answer(inc, escalation, action="raise_budget", budget=amount)

    def unknown_command(self, inc: Incoming) -> str:
        return f"I don't know that command.\n\n{HELP}"

    def not_text(self, inc: Incoming) -> str:
        return "I understand text messages only."

    # --- questions (escalations) ----------------------------------------------------------
    def _replied_escalation(self, inc: Incoming):
        """The open question the message replies to, if it is one of this person's."""
        from agents import selectors as agent_selectors

        replied = inc.message.reply_to_message
        return agent_selectors.escalation_for_reply(telegram_message_id=replied.message_id, user_id=inc.user.id)

    def _escalation(self, inc: Incoming):
        """The question replied to, else the person's newest open question."""
        from agents import selectors as agent_selectors

        if inc.message.reply_to_message is not None:
            escalation = self._replied_escalation(inc)
            if escalation is not None:
                return escalation
        return agent_selectors.open_escalation_for_user(user_id=inc.user.id)

    def _answer(self, inc: Incoming, escalation, *, action: str, answer: str = "",
                budget: Decimal | None = None) -> str:
        from agents import services as agent_services

        agent_services.escalation_answer(escalation_id=escalation.id, user=inc.user, action=action, answer=answer,
                                         budget_increase_usd=budget)
        run_id = escalation.run_id
        if action == "cancel":
            return f"Run #{run_id} is cancelled. I'll confirm when it has stopped."
        if action == "raise_budget":
            return f"Run #{run_id}: budget raised by ${budget:.2f}. It goes on."
        return f"Thanks. Run #{run_id} goes on with your answer."


# --- long polling and the webhook's registration ------------------------------------------
class PollFailed(AppError):
    """getUpdates failed. ``fatal``: it will not work by trying again (bad token, webhook set)."""

    code = "telegram_poll_failed"

    def __init__(self, message: str, *, fatal: bool):
        super().__init__(message)
        self.fatal = fatal


def poll(*, offset: int | None, timeout: int) -> tuple[int | None, int]:
    """One getUpdates (long polling ``timeout`` seconds); handle what came.

    Returns the offset that confirms what was handled, and how many updates came.
    """
    from telebot import apihelper

    token = _token()
    apihelper.API_URL = settings.TELEGRAM_API_URL
    try:
        raw_updates = apihelper.get_updates(token, offset=offset, long_polling_timeout=max(1, timeout))
    except apihelper.ApiTelegramException as exc:
        fatal = exc.error_code in (401, 404, 409)
        hint = " (a webhook is set: delete it with runbot --delete-webhook)" if "webhook" in exc.description else ""
        raise PollFailed(f"getUpdates failed: {exc.error_code} {exc.description}{hint}", fatal=fatal) from None
    except apihelper.ApiException as exc:
        raise PollFailed(f"getUpdates failed: {type(exc).__name__}", fatal=False) from None
    except requests.RequestException as exc:
        raise PollFailed(f"Telegram could not be reached ({type(exc).__name__})", fatal=False) from None
    for raw in raw_updates or []:
        update_id = raw.get("update_id") if isinstance(raw, dict) else None
        if isinstance(update_id, int):
            offset = max(offset or 0, update_id + 1)
        handle_update(raw)
    return offset, len(raw_updates or [])


def poll_confirm(*, offset: int) -> None:
    """Confirm every update before ``offset`` without handling more: getUpdates with that offset."""
    from telebot import apihelper

    apihelper.API_URL = settings.TELEGRAM_API_URL
    try:
        apihelper.get_updates(_token(), offset=offset, limit=1, long_polling_timeout=1)
    except apihelper.ApiException as exc:
        raise PollFailed(f"confirming updates failed: {type(exc).__name__}", fatal=False) from None
    except requests.RequestException as exc:
        raise PollFailed(f"Telegram could not be reached ({type(exc).__name__})", fatal=False) from None


def webhook_set(*, url: str) -> None:
    """Tell Telegram to deliver updates to ``url`` with our secret header."""
    from telebot import apihelper

    if not settings.TELEGRAM_WEBHOOK_SECRET:
        raise ValidationFailed("Set TELEGRAM_WEBHOOK_SECRET first: the webhook refuses every call without it.",
                               code="webhook_secret_missing")
    bot = build_bot()
    try:
        bot.set_webhook(url=url, secret_token=settings.TELEGRAM_WEBHOOK_SECRET, allowed_updates=["message"])
    except apihelper.ApiTelegramException as exc:
        raise ValidationFailed(f"Telegram refused the webhook: {exc.description}", code="webhook_refused") from None


def webhook_delete() -> None:
    from telebot import apihelper

    try:
        build_bot().delete_webhook()
    except apihelper.ApiTelegramException as exc:
        raise AppError(f"Telegram refused to delete the webhook: {exc.description}", code="webhook_refused") from None
