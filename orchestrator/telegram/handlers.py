"""The Telegram bot: an interface like the API. Parse the message, call one service, render the answer.

Long polling (``manage.py runbot``) and the webhook (``orchestrator/telegram/webhook.py``) hand
raw updates to ``handle_update``, which validates them with pydantic before anything else: a
malformed update is logged and ignored, and nothing changes. The command is then looked up here
(case-insensitive: ``/NEW`` is ``/new``; ``/new@our_bot`` too); no SDK object is involved.

Who may do what: a Telegram user is someone only through a TelegramAccount. Unknown users are
refused with their Telegram id shown, except ``/start <invite code>`` (fail closed). Only private
chats are served. Text PostgreSQL cannot store (NUL characters, lone surrogates) is refused with
a clear answer before any handler sees it.

Every answer goes through the outbox (``projects.notifications.reply_queue``), like everything
the system says: written in the same transaction as what the command did, then delivered in
order by the ``notify.send_message`` task, so a 429 or a hiccup is retried, not lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from agents import selectors as agent_selectors
from agents import services as agent_services
from agents.models import Backend, Escalation, Role
from agents.scripted.catalogue import CATALOGUE
from config.errors import AppError, PermanentError, TransientError, ValidationFailed
from orchestrator import bots, releases
from orchestrator.telegram import transport
from projects import notifications, people, runs, selectors, services
from projects.health import release_health
from projects.models import OutboundMessage, Project, TelegramAccount
from secrets_meta import redaction
from secrets_meta import selectors as secret_selectors
from secrets_meta import services as secret_services

log = structlog.get_logger(__name__)

MAX_TEXT = 4096
HELP = (
    "I build and deploy web services and Telegram bots from a description. Just write what you want, e.g. "
    "“a web service that greets people by name” or “a telegram bot that rolls dice”.\n\n"
    "/new <description> – start a project\n"
    "/new --own-bot <description> – a Telegram bot project that runs as your own bot (from @BotFather) "
    "instead of one from the factory's pool\n"
    "/token <token> – give your own bot's token to your bot project (or /token, then the token); "
    "I delete the message and keep the token encrypted\n"
    "/secret NAME – give a secret your project needs (an API key, ...): then send its value in the next "
    "message (or /secret NAME value; /secret <project> NAME for another project); I delete the message "
    "and keep the value encrypted\n"
    "/secrets [project] – the secrets a project has and the ones it still needs (names only)\n"
    "/examples – what I can build\n"
    "/projects – your projects\n"
    "/status [project] – a project's run, stage, cost, live URL and health\n"
    "/change [project] <what to change> – change a live project, e.g. /change also roll dice\n"
    "/rollback [project] – serve the release before the live one again\n"
    "/cancel [project] – stop a run in progress\n"
    "/answer <text> – answer the question I asked you (or simply reply to it)\n"
    "/budget <dollars> – raise the budget of a run that waits for it\n"
    "/help – this message"
)
NOT_A_QUESTION = (
    "That message is not a question waiting for an answer (it may have been answered already). "
    "To start a new project, send /new <description>."
)
UNREADABLE = (
    "I can't read that message: it contains a character I can't store (such as a NUL character). "
    "Please send it again as plain text."
)
CRASHED = "Something went wrong on my side. Please try again in a minute."
TOKEN_PROMPT = (
    "Send me your bot's token in your next message (from @BotFather: /mybots → your bot → API Token). "
    "I delete that message at once and keep the token encrypted."
)
TOKEN_PROMPT_SECONDS = 600
NO_BOT_PROJECT = (
    "You have no bot project to use a token for. Start one with /new --own-bot <description>, "
    "then send the token with /token."
)
OWN_BOT_FLAGS = ("--own-bot", "--own_bot", "—own-bot", "—own_bot", "--ownbot")
# /secret NAME's prompt: the next message is NAME's value for that project. The prompt says which
# (SECRET_PROMPT_RE reads it back from the outbox), like /token's.
SECRET_PROMPT = (
    "Send me the value of {name} for project #{project_id} ({project}) in your next message. "
    "I delete that message at once and keep the value encrypted; nobody sees it again, no agent either."
)
SECRET_PROMPT_RE = re.compile(r"^Send me the value of ([A-Z_][A-Z0-9_]*) for project #([0-9]+) ")
SECRET_USAGE = (
    "Send /secret NAME, then the value in the next message (or /secret NAME value), e.g. /secret API_KEY. "
    "For another project than your newest: /secret <project id> NAME. /secrets lists what a project needs."
)
SECRET_BAD_NAME = (
    "That is not a secret name: use upper case letters, digits and _, not starting with a digit (e.g. API_KEY). "
) + SECRET_USAGE
SECRET_BOT_TOKEN = (
    f"{secret_services.BOT_TOKEN_KEY} is your bot's token: send it with /token instead "
    "(it is checked with Telegram before it is used)."
)
# What a message may carry besides text; anything else without text (a service message) is ignored.
MEDIA = (
    "animation",
    "audio",
    "document",
    "photo",
    "sticker",
    "story",
    "video",
    "video_note",
    "voice",
    "contact",
    "dice",
    "game",
    "poll",
    "venue",
    "location",
    "paid_media",
)


def storable(text: str) -> bool:
    """Whether PostgreSQL can store the text: no NUL character, nothing that is not UTF-8."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800")
        return False
    return True


def _storable(text: str) -> str:
    if not storable(text):
        raise ValueError("contains characters that cannot be stored (NUL or a lone surrogate)")
    return text


# --- the edge: what an update must look like -------------------------------------------
class _Edge(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class TgUser(_Edge):
    id: StrictInt
    is_bot: StrictBool = False
    first_name: Annotated[str, AfterValidator(_storable)] = Field(default="", max_length=256)
    username: Annotated[str, AfterValidator(_storable)] | None = Field(default=None, max_length=64)


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
    media: tuple[str, ...] = ()  # which of MEDIA the message carries
    # The text cannot be stored (NUL, a lone surrogate): the message is answered, not ignored,
    # and its text is dropped here so nothing downstream ever sees it.
    unreadable: bool = False

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**data, "media": tuple(kind for kind in MEDIA if kind in data), "unreadable": False}
            if isinstance(data.get("text"), str) and not storable(data["text"]):
                data.update(text="", unreadable=True)
        return data


class TgUpdate(_Edge):
    update_id: StrictInt
    message: TgMessage | None = None


def _errors(exc: ValidationError) -> list[str]:
    """Where an update is wrong, without echoing its content."""
    return [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]]


def handle_update(raw: Any) -> bool:
    """Validate one raw update and handle its message. False when it was ignored."""
    try:
        update = TgUpdate.model_validate(raw)
    except ValidationError as exc:
        log.warning("telegram_update_rejected", errors=_errors(exc))
        return False
    if update.message is None:
        log.info("telegram_update_ignored", update_id=update.update_id, reason="not a new message")
        return False
    handle_message(update.message)
    return True


# --- a message ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Incoming:
    message: TgMessage
    sender: TgUser
    account: TelegramAccount | None
    args: str  # what follows the command (or the whole text of a plain message)

    @property
    def user(self):
        return self.account.user  # handlers that run for known people only


def parse_command(text: str) -> tuple[str | None, str]:
    """(command, what follows) of ``/Cmd@bot args``; (None, the stripped text) for plain text.

    Commands are case-insensitive, and a ``@botname`` suffix is dropped.
    """
    if not text.startswith("/"):
        return None, text.strip()
    parts = text.split(maxsplit=1)
    command = parts[0][1:].split("@", 1)[0].lower()
    return command, parts[1].strip() if len(parts) > 1 else ""


def refusal(telegram_user_id: int) -> str:
    return (
        f"Sorry, I only work for people I know. Your Telegram id is {telegram_user_id}. "
        "Send it to an operator to be let in, or send /start <invite code> if you have one."
    )


def handle_message(message: TgMessage) -> None:
    if message.chat.type != "private":
        log.info("telegram_message_ignored", reason="not a private chat", chat_type=message.chat.type)
        return
    sender = message.from_
    if sender is None or sender.is_bot:
        log.info("telegram_message_ignored", reason="no human sender", chat_id=message.chat.id)
        return
    handler, args = _route(message)
    if handler is None:
        log.info("telegram_message_ignored", reason="neither text nor media", chat_id=message.chat.id)
        return
    account = people.account_for_telegram_user(telegram_user_id=sender.id)
    if account is not None:
        people.account_seen(account_id=account.id, chat_id=message.chat.id, username=sender.username or "")

    def reply(text: str) -> None:
        notifications.reply_queue(chat_id=message.chat.id, account_id=account.id if account else None, text=text)

    if account is None and handler is not Handlers.start:
        log.info("telegram_unknown_user_refused", telegram_user_id=sender.id, handler=handler.__name__)
        reply(refusal(sender.id))
        return
    if message.unreadable:
        log.info("telegram_message_unreadable", telegram_user_id=sender.id, handler=handler.__name__)
        reply(UNREADABLE)
        return
    intake = _intake(message, account) if account is not None else None
    if isinstance(intake, SecretIntake):
        # A value (or what may be one): deleted from the chat first, then stored; never logged.
        _secret_intake(Incoming(message, sender, account, args), intake, reply)
        return
    if intake == "token":
        # Never stored as text, never an escalation's answer: deleted from the chat, validated
        # and stored by the token intake, outside a transaction (it calls Telegram).
        try:
            reply(Handlers.token(Incoming(message, sender, account, args)))
        except AppError as exc:
            reply(exc.message)
        except Exception:
            log.exception("telegram_handler_crashed", handler="token", telegram_user_id=sender.id)
            reply(CRASHED)
        return
    try:
        # The answer is committed with what the command did: it goes out before anything that
        # follows from it (the run's first stage is enqueued only on this commit).
        with transaction.atomic():
            answer = handler(Incoming(message, sender, account, args))
            if answer:
                reply(answer)
    except AppError as exc:
        reply(exc.message)
    except Exception:  # a bug: the person hears so, the trace goes to the log
        log.exception("telegram_handler_crashed", handler=handler.__name__, telegram_user_id=sender.id)
        reply(CRASHED)


def _route(message: TgMessage) -> tuple[Callable[[Incoming], str | None] | None, str]:
    if message.text is None:
        return (Handlers.not_text, "") if message.media else (None, "")
    command, args = parse_command(message.text)
    if command is None:
        return Handlers.text, args
    return COMMANDS.get(command, Handlers.unknown_command), args


class Handlers:
    """One function per command: an Incoming in, the answer's text out (or an AppError)."""

    @staticmethod
    def start(inc: Incoming) -> str:
        if inc.account is not None:
            note = " The invite code was not used." if inc.args else ""
            return f"Welcome back, {inc.account.user.username}.{note}\n\n{HELP}"
        if not inc.args:
            return refusal(inc.sender.id)
        account = people.invite_redeem(
            code=inc.args,
            telegram_user_id=inc.sender.id,
            chat_id=inc.message.chat.id,
            username=inc.sender.username or "",
        )
        return f"Welcome! You're in as {account.user.username}.\n\n{HELP}"

    @staticmethod
    def help(inc: Incoming) -> str:
        return HELP

    @staticmethod
    def examples(inc: Incoming) -> str:
        if agent_services.agent_config_for(role=Role.ARCHITECT).backend == Backend.SCRIPTED:
            head = "I can build web services and Telegram bots that do these things, one or several together:"
        else:
            head = "Some things you can ask for, as a web service or a Telegram bot (describe yours in a sentence):"
        lines = [f"• {feature.does}: “{feature.example}” or “{feature.bot_example}”" for feature in CATALOGUE]
        tail = (
            "A bot runs as one of the factory's bots, or as your own: /new --own-bot <description>. "
            "Send /new <description>, or simply write it."
        )
        return "\n".join([head, *lines, "", tail])

    @staticmethod
    def new(inc: Incoming) -> str:
        own_bot, description = _own_bot_flag(inc.args)
        project, run = services.project_create(owner=inc.user, description=description, own_bot=own_bot)
        answer = (
            f"Got it: project #{project.id}, run #{run.id} is queued. I'll write to you as it moves through "
            f"planning, code, tests and deploy. /status {project.id} shows where it is."
        )
        if own_bot:
            answer += (
                "\nIt will run as your own bot: create one with @BotFather and send me its token with /token "
                "(now, or when I ask for it)."
            )
        return answer

    @staticmethod
    def token(inc: Incoming) -> str:
        """A person's own bot token: /token <token>, /token then the token, a reply to the question
        asking for it, or any message carrying a token. The message is deleted first."""
        text = inc.message.text or ""
        command, args = parse_command(text)
        candidate = bots.looks_like_token(text) or (args if command == "token" else text.strip())
        escalation = _replied_escalation(inc) if inc.message.reply_to_message is not None else None
        if not candidate:
            if bots.token_project_for(user=inc.user) is None:
                return NO_BOT_PROJECT
            return TOKEN_PROMPT
        redaction.register("TELEGRAM_BOT_TOKEN", candidate)
        deleted = _delete_message(inc)
        note = "" if deleted else " I could not delete your message with the token: please delete it yourself."
        project = bots.token_project_for(user=inc.user, escalation=escalation)
        if project is None:
            return NO_BOT_PROJECT + note
        try:
            row = bots.own_token_intake(project.id, candidate, actor=f"user:{inc.user.id}")
        except AppError as exc:
            return exc.message + note
        name = project.name or f"#{project.id}"
        return f"Got it: your project will run as @{row.username} (project {name}).{note}"

    @staticmethod
    def text(inc: Incoming) -> str:
        if inc.message.reply_to_message is not None:
            escalation = _replied_escalation(inc)
            if escalation is None:
                return NOT_A_QUESTION
            return _answer(inc, escalation, action="guidance", answer=inc.args)
        return Handlers.new(inc)

    @staticmethod
    def projects(inc: Incoming) -> str:
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

    @staticmethod
    def status(inc: Incoming) -> str:
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
            if run.status in ("failed", "cancelled"):
                lines.append(f"Reason: {notifications.run_reason_for_person(run)}")
        if status.live is not None:  # how the release is (US4); the live line with a fresh probe comes last
            lines += _live_lines(selectors.project_health(project_id=project.id))
        lines.append(f"Cost so far: ${status.cost_usd:.2f}")
        if status.live is not None:
            since = status.live.live_at.strftime("%Y-%m-%d %H:%M UTC") if status.live.live_at else "?"
            lines.append(f"Live: {status.live.url} (since {since}), {_health(project.id)}")
        elif status.last_deployment is not None:
            lines.append(f"Not live. Last deploy: {status.last_deployment.status}")
        else:
            lines.append("Not deployed yet.")
        return "\n".join(lines)

    @staticmethod
    def change(inc: Incoming) -> str:
        project, description = _named_project(inc, usage="/change [project] <what to change>")
        run = services.project_request_change(project_id=project.id, description=description, user=inc.user)
        return (
            f"Got it: run #{run.id} changes {_project_title(project)}. The live release keeps serving until "
            f"the new one passes its checks. /status {project.id} shows where it is."
        )

    @staticmethod
    def rollback(inc: Incoming) -> str:
        project, _ = _named_project(inc, usage="/rollback [project]", rest=False)
        services.project_check_idle(project_id=project.id)
        restored = releases.rollback_by_hand(project=project)
        return f"{_project_title(project)} is rolled back: release {restored.id} serves again at {restored.url}."

    @staticmethod
    def cancel(inc: Incoming) -> str:
        if inc.message.reply_to_message is not None and not inc.args:
            escalation = _replied_escalation(inc)
            if escalation is not None:
                return _answer(inc, escalation, action="cancel")
        run = people.run_active(user=inc.user, ref=inc.args or None)
        runs.run_cancel(run_id=run.id, user=inc.user)
        return f"Run #{run.id} of {run.project} is cancelled. I'll confirm when it has stopped."

    @staticmethod
    def answer(inc: Incoming) -> str:
        escalation = _escalation(inc)
        if escalation is None:
            return "Nothing is waiting for your answer right now."
        if escalation.reason == Escalation.Reason.BOT_TOKEN:
            return "That question is answered with your bot's token: send /token, then the token."
        if escalation.reason == Escalation.Reason.SECRETS_MISSING:  # /answer with no text (with text: _intake)
            return "That question is answered with the secrets themselves. " + _secrets_howto(escalation)
        if not inc.args:
            return "Write your answer after /answer, e.g. /answer use the standard library only."
        return _answer(inc, escalation, action="guidance", answer=inc.args)

    @staticmethod
    def budget(inc: Incoming) -> str:
        escalation = _escalation(inc)
        if escalation is None:
            return "No run is waiting for more budget right now."
        try:
            amount = Decimal(inc.args.replace("$", "").replace("+", "").strip())
        except InvalidOperation as exc:
            raise ValidationFailed("Give the amount in dollars, e.g. /budget 5.", code="bad_budget") from exc
        return _answer(inc, escalation, action="raise_budget", budget=amount)

    @staticmethod
    def secrets(inc: Incoming) -> str:
        """The project's secrets by name: set, generated or still needed; never a value."""
        project = _secret_project(inc, name=None, ref=inc.args or None)
        rows = secret_selectors.secret_rows(project_id=project.id)
        title = _project_title(project)
        if not rows:
            return f"{title} has no secrets. Give one with /secret NAME."
        lines = []
        for row in rows:
            if not row["filled"]:
                state = "missing: send it with /secret " + row["key"]
            elif row["kind"] == "infra":
                state = f"generated by the factory ({row['length']} characters)"
            else:
                state = f"set ({row['length']} characters)"
            lines.append(f"• {row['key']}: {state}")
        return f"Secrets of {title}:\n" + "\n".join(lines)

    @staticmethod
    def secret(inc: Incoming) -> str:
        """Reached only through the secret intake (``_intake`` sends every /secret there)."""
        return SECRET_USAGE

    @staticmethod
    def unknown_command(inc: Incoming) -> str:
        return f"I don't know that command.\n\n{HELP}"

    @staticmethod
    def not_text(inc: Incoming) -> str:
        return "I understand text messages only."


COMMANDS: dict[str, Callable[[Incoming], str | None]] = {
    "start": Handlers.start,
    "help": Handlers.help,
    "examples": Handlers.examples,
    "new": Handlers.new,
    "projects": Handlers.projects,
    "status": Handlers.status,
    "cancel": Handlers.cancel,
    "change": Handlers.change,
    "rollback": Handlers.rollback,
    "answer": Handlers.answer,
    "budget": Handlers.budget,
    "token": Handlers.token,
    "secret": Handlers.secret,
    "secrets": Handlers.secrets,
}


def _own_bot_flag(args: str) -> tuple[bool, str]:
    """(own bot asked for, the description without the flag) of /new's arguments."""
    words = args.split(maxsplit=1)
    if words and words[0].lower() in OWN_BOT_FLAGS:
        return True, words[1] if len(words) > 1 else ""
    return False, args


# --- values: bot tokens and secrets ---------------------------------------------------------
@dataclass(frozen=True)
class SecretIntake:
    """A message that gives (or may give) a secret's value; ``value`` None: it carries none.

    ``name`` None: a reply to the question asking for secrets (or /answer to it), which is no way
    to give one (which secret would it be?): it is deleted and the person told how."""

    name: str | None
    ref: str | None = None  # the project the person named (or /secret's prompt did)
    value: str | None = None

    @property
    def carries_value(self) -> bool:
        """Whether the message must leave the chat: it has a value, or may (a malformed name may be
        one, e.g. ``/secret KEY=abc``)."""
        if self.name is None or self.value is not None:
            return True
        return bool(self.name) and not re.match(secret_services.KEY_PATTERN, self.name)


def _intake(message: TgMessage, account: TelegramAccount) -> SecretIntake | Literal["token"] | None:
    """Whether a person's message gives a value, and which kind:

    - a secret (SecretIntake): /secret; the next message after /secret NAME's prompt; a reply to
      the question asking for secrets, or /answer to it (refused: deleted, the person told how);
    - a bot token ("token"): /token, anything with a token in it, a reply to the question asking
      for one, or the next message after /token's prompt.
    """
    text = message.text
    if not text:
        return None
    command, args = parse_command(text)
    if command == "secret":
        return _parse_secret(args)
    if command == "token":
        return "token"
    if command == "answer" and args:
        escalation = _escalation_of(message, account, newest=True)
        if escalation is not None and escalation.reason == Escalation.Reason.SECRETS_MISSING:
            return SecretIntake(name=None)
    prompt = _recent_prompt(account) if command is None else None
    found = SECRET_PROMPT_RE.match(prompt or "")
    if found:  # /secret NAME asked for this very message
        return SecretIntake(name=found.group(1), ref=found.group(2), value=text.strip())
    if bots.looks_like_token(text):
        return "token"
    if command is not None:
        return None
    if message.reply_to_message is not None:
        escalation = _escalation_of(message, account, newest=False)
        reason = escalation.reason if escalation is not None else None
        if reason == Escalation.Reason.BOT_TOKEN:
            return "token"
        if reason == Escalation.Reason.SECRETS_MISSING:
            return SecretIntake(name=None)
        return None
    return "token" if prompt == TOKEN_PROMPT else None


def _parse_secret(args: str) -> SecretIntake:
    """``/secret [project] NAME [value]``: a project is an id (``12`` or ``#12``), since a name never
    starts with a digit; the value is the rest of the message."""
    ref = None
    words = args.split(maxsplit=1)
    if words and words[0].lstrip("#").isdigit():
        ref, args = words[0], words[1] if len(words) > 1 else ""
        words = args.split(maxsplit=1)
    if not words:
        return SecretIntake(name="", ref=ref)
    return SecretIntake(name=words[0], ref=ref, value=words[1] if len(words) > 1 else None)


def _escalation_of(message: TgMessage, account: TelegramAccount, *, newest: bool) -> Escalation | None:
    """The open question the message replies to; with ``newest``, else the person's newest one."""
    if message.reply_to_message is not None:
        escalation = agent_selectors.escalation_for_reply(
            telegram_message_id=message.reply_to_message.message_id, user_id=account.user_id
        )
        if escalation is not None or not newest:
            return escalation
    return agent_selectors.open_escalation_for_user(user_id=account.user_id) if newest else None


def _recent_prompt(account: TelegramAccount) -> str | None:
    """The last thing said to this person in answer to a message, if lately (a prompt for a value
    is answered by the next message within TOKEN_PROMPT_SECONDS)."""
    last = (
        OutboundMessage.objects.filter(
            account_id=account.id, run__isnull=True, event__isnull=True, escalation__isnull=True
        )
        .order_by("-id")
        .values("text", "created_at")
        .first()
    )
    if last is None or (timezone.now() - last["created_at"]).total_seconds() >= TOKEN_PROMPT_SECONDS:
        return None
    return last["text"]


def _secret_intake(inc: Incoming, intake: SecretIntake, reply: Callable[[str], object]) -> None:
    """Delete the message if it carries a value (before anything else), then store the value, or
    prompt for it, or refuse. The value is never logged, not even in a crash's traceback (its
    locals), and every answer names the secret and its length only."""
    note = ""
    if intake.carries_value:
        if intake.value and intake.name:
            redaction.register(intake.name, intake.value)
        if not _delete_message(inc):
            note = " I could not delete your message with the value: please delete it yourself."
    try:
        with transaction.atomic():
            reply(_secret_answer(inc, intake) + note)
    except AppError as exc:
        reply(exc.message + note)
    except Exception as exc:  # noqa: BLE001 (a bug: logged by its type only, no traceback: its locals hold the value)
        log.error("telegram_handler_crashed", handler="secret", user_id=inc.user.id, error=type(exc).__name__)
        reply(CRASHED + note)


def _secret_answer(inc: Incoming, intake: SecretIntake) -> str:
    if intake.name is None:  # a text answer to the question asking for secrets
        escalation = _escalation_of(inc.message, inc.account, newest=True)
        return (
            "Secrets are not given as a reply: I did not keep your message, and deleted it from this chat in case "
            "it held a value. " + _secrets_howto(escalation)
        )
    if not intake.name:
        return SECRET_USAGE
    if not re.match(secret_services.KEY_PATTERN, intake.name) or len(intake.name) > secret_services.KEY_MAX_LENGTH:
        return SECRET_BAD_NAME  # the "name" is never repeated: it may be a value
    name = secret_services.validate_key(intake.name)  # a name the factory sets itself is refused
    project = _secret_project(inc, name=name, ref=intake.ref)
    if name == secret_services.BOT_TOKEN_KEY and project.kind != Project.Kind.WEB_SERVICE:
        return SECRET_BOT_TOKEN  # a bot project's token is checked first (secret_put refuses it too)
    if intake.value is None:
        return SECRET_PROMPT.format(name=name, project_id=project.id, project=project.name or "not planned yet")
    meta = secret_services.secret_put(project_id=project.id, key=name, value=intake.value, actor=f"user:{inc.user.id}")
    answer = f"Stored {name} ({meta.length} characters) for {_project_title(project)}."
    missing = secret_selectors.secrets_missing(project_id=project.id)
    if missing:
        answer += f" Still needed: {', '.join(missing)}."
    return answer


def _missing_of(escalation: Escalation | None) -> list[str]:
    """The secrets a question asking for them lists (what the Deployer found missing)."""
    if escalation is None:
        return []
    return list(((escalation.context or {}).get("output") or {}).get("missing") or [])


def _secrets_howto(escalation: Escalation | None) -> str:
    missing = _missing_of(escalation)
    example = missing[0] if missing else "API_KEY"
    return f"Send each one with /secret NAME, then its value in the next message, e.g. /secret {example}." + (
        f" Still needed: {', '.join(missing)}." if missing else ""
    )


def _secret_project(inc: Incoming, *, name: str | None, ref: str | None) -> Project:
    """The project a secret is for: the one named; else the one whose question the message
    replies to; else the person's newest project waiting for secrets (for ``name``, among those
    listing it); else their newest project."""
    if ref:
        return people.project_for(user=inc.user, ref=ref)
    escalation = _escalation_of(inc.message, inc.account, newest=False)
    if escalation is not None and escalation.reason == Escalation.Reason.SECRETS_MISSING:
        return escalation.run.project
    waiting = (
        Escalation.objects.select_related("run__project")
        .filter(
            run__project__owner_id=inc.user.id,
            status=Escalation.Status.OPEN,
            reason=Escalation.Reason.SECRETS_MISSING,
        )
        .order_by("-created_at", "-id")[:20]
    )
    for candidate in waiting:
        if name is None or name in _missing_of(candidate):
            return candidate.run.project
    return people.project_latest(user=inc.user)


def _project_title(project: Project) -> str:
    return project.name or f"project #{project.id}"


def _delete_message(inc: Incoming) -> bool:
    """Delete the message that carried a token or a secret from the chat; False when Telegram would not."""
    try:
        transport.delete_message(inc.message.chat.id, inc.message.message_id)
    except AppError as exc:
        log.warning("telegram_value_message_not_deleted", chat_id=inc.message.chat.id, code=exc.code)
        return False
    return True


def _health(project_id: int) -> str:
    # The bot is an interface: like an admin action, it may ask for a read-only probe.
    health = release_health(project_id=project_id)
    if health is None:
        return "health unknown"
    return "healthy" if health.ok else f"unhealthy: {health.detail}"


def _named_project(inc: Incoming, *, usage: str, rest: bool = True) -> tuple[Project, str]:
    """The project a command is about and the rest of its words: the first word when it names one
    of the person's projects (id, #id or slug); else their only project; a person with several
    must name it."""
    first, _, after = inc.args.strip().partition(" ")
    if first:
        try:
            return people.project_for(user=inc.user, ref=first), after.strip()
        except AppError:
            if not rest:
                raise
    mine = people.projects_of(user=inc.user, limit=2)
    if not mine:
        raise ValidationFailed("You have no projects yet. Describe a service to start one.", code="no_projects")
    if len(mine) > 1:
        raise ValidationFailed(f"You have several projects: name one. {usage}; /projects lists them.", code="which")
    return mine[0], inc.args.strip()


def _live_lines(health: dict) -> list[str]:
    """/status about the live release (US4): uptime, last probe, resources, the last 24 hours."""
    live, lines = health["live"], []
    if live is None:
        return lines
    if live["live_at"]:
        lines.append(f"Up for {_duration((health['now'] - live['live_at']).total_seconds())}")
    if live["probed_at"]:
        result = "healthy" if live["probe_ok"] else f"unhealthy ({live['probe_detail']})"
        lines.append(f"Last probe: {result} in {live['probe_ms']} ms at {live['probed_at']:%H:%M:%S} UTC")
    if live["cpu_percent"] is not None or live["memory_bytes"] is not None:
        cpu = f"{live['cpu_percent']:.1f}%" if live["cpu_percent"] is not None else "?"
        memory = f"{live['memory_bytes'] / 2**20:.0f} MB" if live["memory_bytes"] is not None else "?"
        lines.append(f"CPU {cpu}, memory {memory}")
    incidents, restarts = health["incidents_24h"], health["restarts_24h"]
    lines.append(
        f"Last 24 h: {incidents} incident{'s' if incidents != 1 else ''}, "
        f"{restarts} restart{'s' if restarts != 1 else ''} (the release has been restarted {live['restarts']} times)"
    )
    return lines


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    return f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m"


# --- questions (escalations) ----------------------------------------------------------
def _replied_escalation(inc: Incoming):
    """The open question the message replies to, if it is one of this person's."""
    replied = inc.message.reply_to_message
    return agent_selectors.escalation_for_reply(telegram_message_id=replied.message_id, user_id=inc.user.id)


def _escalation(inc: Incoming):
    """The question replied to, else the person's newest open question."""
    if inc.message.reply_to_message is not None:
        escalation = _replied_escalation(inc)
        if escalation is not None:
            return escalation
    return agent_selectors.open_escalation_for_user(user_id=inc.user.id)


def _answer(inc: Incoming, escalation, *, action: str, answer: str = "", budget: Decimal | None = None) -> str:
    agent_services.escalation_answer(
        escalation_id=escalation.id, user=inc.user, action=action, answer=answer, budget_increase_usd=budget
    )
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
    try:
        raw_updates = transport.get_updates(offset=offset, timeout=timeout)
    except PermanentError as exc:
        hint = " (a webhook is set: delete it with runbot --delete-webhook)" if "webhook" in exc.message else ""
        raise PollFailed(f"getUpdates failed: {exc.message}{hint}", fatal=True) from None
    except TransientError as exc:
        raise PollFailed(f"getUpdates failed: {exc.message}", fatal=False) from None
    for raw in raw_updates:
        update_id = raw.get("update_id") if isinstance(raw, dict) else None
        if isinstance(update_id, int):
            offset = max(offset or 0, update_id + 1)
        handle_update(raw)
    return offset, len(raw_updates)


def poll_confirm(*, offset: int) -> None:
    """Confirm every update before ``offset`` without handling more: getUpdates with that offset."""
    try:
        transport.get_updates(offset=offset, timeout=1, limit=1)
    except AppError as exc:
        raise PollFailed(f"confirming updates failed: {exc.message}", fatal=False) from None


def webhook_set(*, url: str) -> None:
    """Tell Telegram to deliver updates to ``url`` with our secret header."""
    if not settings.TELEGRAM_WEBHOOK_SECRET:
        raise ValidationFailed(
            "Set TELEGRAM_WEBHOOK_SECRET first: the webhook refuses every call without it.",
            code="webhook_secret_missing",
        )
    try:
        transport.set_webhook(url=url, secret_token=settings.TELEGRAM_WEBHOOK_SECRET)
    except PermanentError as exc:
        raise ValidationFailed(f"Telegram refused the webhook: {exc.message}", code="webhook_refused") from None


def webhook_delete() -> None:
    try:
        transport.delete_webhook()
    except PermanentError as exc:
        raise AppError(f"Telegram refused to delete the webhook: {exc.message}", code="webhook_refused") from None
