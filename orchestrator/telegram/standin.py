"""A loopback stand-in of the Telegram Bot API: product code, used by the bot deploy check, the
demo, ``manage.py botapi`` and the tests.

It speaks the Bot API wire format at ``/bot<token>/<method>`` (parameters in the query string, a
JSON body or a form body; answers ``{"ok": true, "result": …}`` or ``{"ok": false, "error_code",
"description"}``) for several bots at once: each token is its own bot, with its id, username,
queue of updates, chats, webhook and commands. Unknown tokens answer 401 ``Unauthorized``,
unknown methods 404 ``Not Found``.

Methods: getMe, getUpdates (``offset``, ``limit``, long polling ``timeout``), sendMessage,
deleteMessage, setWebhook, deleteWebhook, getWebhookInfo, setMyCommands, deleteMyCommands,
getMyCommands, sendChatAction, answerCallbackQuery. As Telegram does:

- a getUpdates that overlaps another one of the same bot ends the older one with 409 "Conflict:
  terminated by other getUpdates request; …" (the newest poller wins, so a bot restarted after its
  process died is served at once);
- getUpdates while a webhook is set answers 409 "Conflict: can't use getUpdates method while
  webhook is active; …";
- a bot "used elsewhere" is simulated by ``set_webhook`` (someone set a webhook) or
  ``start_foreign_poller`` (another program polls it: every getUpdates of ours is terminated with
  409 until ``stop_foreign_poller``).

The Python side (``say``, ``make_update``, ``sent``, ``wait_for_reply`` …) is what a person or a
test does with a bot. Thread-safe: each request is served on its own thread; all state is under
one condition variable. Tokens are never logged.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HTML_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "span",
    "tg-spoiler",
    "tg-emoji",
    "blockquote",
}
# Parameters Telegram takes as JSON-serialized objects.
JSON_PARAMS = {
    "reply_parameters",
    "reply_markup",
    "allowed_updates",
    "entities",
    "link_preview_options",
    "commands",
    "scope",
}
CONFLICT_POLLER = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
)
TOKEN_ALPHABET = string.ascii_letters + string.digits + "_-"
MAX_POLL_SECONDS = 50
DEFAULT_USER = {"id": 4242, "is_bot": False, "first_name": "Ada", "username": "ada_l", "language_code": "en"}


class ApiError(Exception):
    """An answer ``{"ok": false, …}`` with this HTTP status and description."""

    def __init__(self, status: int, description: str, retry_after: int | None = None):
        super().__init__(description)
        self.status, self.description, self.retry_after = status, description, retry_after

    def body(self) -> dict:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


class HTMLCheck(HTMLParser):
    """Telegram's HTML parse mode refuses unknown tags and unclosed ones."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problem: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if self.problem is None and tag not in HTML_TAGS:
            self.problem = f'Unsupported start tag "{tag}" at byte offset {self.getpos()[1]}'
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.problem is None and (not self.open or self.open[-1] != tag):
            self.problem = f'Can\'t find end tag corresponding to start tag "{tag}"'
        elif self.open:
            self.open.pop()

    @classmethod
    def problem_in(cls, text: str) -> str | None:
        check = cls()
        check.feed(text)
        check.close()
        if check.problem is None and check.open:
            return f'Can\'t find end tag corresponding to start tag "{check.open[-1]}"'
        return check.problem


def mint_token(bot_id: int) -> str:
    """A well-formed bot token for ``bot_id``: ``<digits>:<35 characters of [A-Za-z0-9_-]>``."""
    return f"{bot_id}:" + "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(35))


def make_user(id: int = 4242, *, first_name: str = "Ada", username: str | None = "ada_l", is_bot: bool = False) -> dict:
    """A Telegram User object."""
    found: dict[str, Any] = {"id": id, "is_bot": is_bot, "first_name": first_name, "language_code": "en"}
    if username:
        found["username"] = username
    return found


@dataclass
class Bot:
    """One bot's state (the stand-in's, guarded by its lock)."""

    token: str
    id: int
    username: str
    first_name: str
    updates: list[dict] = field(default_factory=list)  # not yet confirmed by an offset
    messages: dict[tuple[int, int], dict] = field(default_factory=dict)  # (chat id, message id) → message
    sent: list[dict] = field(default_factory=list)  # what the bot sent, in order
    deleted: list[tuple[int, int]] = field(default_factory=list)  # (chat id, message id)
    chat_actions: list[tuple[int, str]] = field(default_factory=list)
    answered_callbacks: list[str] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    webhook: dict[str, Any] = field(default_factory=lambda: {"url": "", "secret_token": None})
    calls: list[tuple[str, int]] = field(default_factory=list)  # (method, status)
    failures: dict[str, list[list]] = field(default_factory=dict)  # method → [[status, description, times]]
    foreign_poller: bool = False
    poll_generation: int = 0
    next_update_id: int = 1
    next_message_id: int = 1

    def as_user(self) -> dict:
        return {
            "id": self.id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }


class StandIn:
    """The loopback Bot API. ``StandIn().start()``; ``add_bot()`` gives a token; ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._bots: dict[str, Bot] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._next_bot_id = 7_100_000_000 + secrets.randbelow(800_000_000)
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # the request line carries the token: never log it
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._handle()

            def do_POST(self) -> None:  # noqa: N802
                self._handle()

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parts = url.path.strip("/").split("/")
                if len(parts) != 2 or not parts[0].startswith("bot"):
                    return self._send(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                try:
                    params = parse_params(url.query, raw, self.headers.get("Content-Type", ""))
                    result = standin._dispatch(parts[0][3:], parts[1], params)
                except ApiError as exc:
                    return self._send(exc.status, exc.body())
                self._send(200, {"ok": True, "result": result})

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="bot-api-standin", daemon=True
        )

    # --- life ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        host = self.httpd.server_address[0]
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        """The value for TELEGRAM_API_URL (telebot's API_URL): ``{0}`` the token, ``{1}`` the method."""
        return f"{self.base_url}/bot{{0}}/{{1}}"

    def start(self) -> StandIn:
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop`` (``manage.py botapi``)."""
        self.httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread.is_alive():
            self._thread.join(5)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- bots ---------------------------------------------------------------------------------
    def add_bot(self, username: str | None = None, *, first_name: str | None = None, token: str | None = None) -> str:
        """A new bot; returns its token (minted unless given: ``<bot id>:<35 characters>``)."""
        with self._cond:
            if token is None:
                bot_id = self._next_bot_id
                self._next_bot_id += 1
                token = mint_token(bot_id)
            else:
                head = token.split(":", 1)[0]
                bot_id = int(head) if head.isdigit() else self._next_bot_id
                self._next_bot_id = max(self._next_bot_id, bot_id) + 1
            if token in self._bots:
                raise ValueError("that bot is already served here")
            name = username or f"standin_{bot_id}_bot"
            self._bots[token] = Bot(token=token, id=bot_id, username=name, first_name=first_name or name)
            return token

    def revoke(self, token: str) -> None:
        """The token stops working (as when its owner revokes it in @BotFather): 401 from now on."""
        with self._cond:
            self._bots.pop(token, None)
            self._cond.notify_all()

    def bot(self, token: str) -> dict:
        """The bot's User object (what getMe answers)."""
        with self._cond:
            return self._bot(token).as_user()

    def tokens(self) -> list[str]:
        with self._cond:
            return list(self._bots)

    # --- what people do -------------------------------------------------------------------------
    def make_update(
        self,
        token: str,
        text: str | None,
        *,
        user: dict | None = None,
        reply_to_message_id: int | None = None,
        extra: dict | None = None,
    ) -> dict:
        """An Update carrying a new message from ``user`` in their private chat with the bot, recorded
        in the chat (so the bot may reply to it or delete it) but not queued for getUpdates."""
        sender = dict(user or DEFAULT_USER)
        with self._cond:
            bot = self._bot(token)
            chat = {"id": sender["id"], "type": "private", "first_name": sender.get("first_name") or "Person"}
            if sender.get("username"):
                chat["username"] = sender["username"]
            message: dict[str, Any] = {
                "message_id": self._take_message_id(bot),
                "from": sender,
                "chat": chat,
                "date": int(time.time()),
            }
            if text is not None:
                message["text"] = text
                if text.startswith("/"):
                    command = text.split()[0] if text.split() else text
                    message["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
            if reply_to_message_id is not None:
                message["reply_to_message"] = bot.messages.get(
                    (chat["id"], reply_to_message_id),
                    {"message_id": reply_to_message_id, "chat": chat, "date": int(time.time())},
                )
            message.update(extra or {})
            bot.messages[(chat["id"], message["message_id"])] = message
            update = {"update_id": bot.next_update_id, "message": message}
            bot.next_update_id += 1
            return update

    def push(self, token: str, *updates: dict) -> None:
        """Queue updates for the bot's getUpdates."""
        with self._cond:
            self._bot(token).updates.extend(updates)
            self._cond.notify_all()

    def say(self, token: str, text: str, *, user: dict | None = None, reply_to_message_id: int | None = None) -> dict:
        """A person writes ``text`` to the bot (delivered through getUpdates); returns the update."""
        update = self.make_update(token, text, user=user, reply_to_message_id=reply_to_message_id)
        self.push(token, update)
        return update

    def pending(self, token: str) -> int:
        """Updates not yet confirmed by the bot."""
        with self._cond:
            return len(self._bot(token).updates)

    # --- what bots did -------------------------------------------------------------------------
    def sent(self, token: str, chat_id: int | None = None) -> list[dict]:
        """The messages the bot sent (Message objects as JSON), oldest first; only to ``chat_id`` if given."""
        with self._cond:
            return [
                json.loads(json.dumps(m))
                for m in self._bot(token).sent
                if chat_id is None or m["chat"]["id"] == int(chat_id)
            ]

    def deleted(self, token: str, chat_id: int | None = None) -> list[int]:
        """Ids of the messages the bot deleted (in ``chat_id`` if given)."""
        with self._cond:
            return [m for c, m in self._bot(token).deleted if chat_id is None or c == int(chat_id)]

    def calls(self, token: str, method: str | None = None) -> list[tuple[str, int]]:
        """The bot's calls as (method, HTTP status), oldest first."""
        with self._cond:
            return [c for c in self._bot(token).calls if method is None or c[0].lower() == method.lower()]

    def commands(self, token: str) -> list[dict]:
        with self._cond:
            return list(self._bot(token).commands)

    def webhook(self, token: str) -> str:
        with self._cond:
            return str(self._bot(token).webhook["url"])

    def wait_for_reply(self, token: str, chat_id: int, contains: str = "", timeout: float = 10.0) -> dict:
        """The first message the bot sent to ``chat_id`` containing ``contains`` (waiting up to
        ``timeout`` seconds); AssertionError listing what was sent when none comes."""
        chat = int(chat_id)
        return self.wait_for(token, lambda m: m["chat"]["id"] == chat and contains in m.get("text", ""), timeout)

    def wait_for(self, token: str, predicate: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                bot = self._bot(token)
                found = next((m for m in bot.sent if predicate(m)), None)
                if found is not None:
                    return json.loads(json.dumps(found))
                left = deadline - time.monotonic()
                if left <= 0:
                    said = "\n".join(f"  {m['chat']['id']}: {m.get('text')!r}" for m in bot.sent)
                    raise AssertionError(f"@{bot.username} sent no matching message in {timeout}s; it sent:\n{said}")
                self._cond.wait(min(left, 0.2))

    # --- the bot used elsewhere, and scripted failures ------------------------------------------
    def set_webhook(self, token: str, url: str) -> None:
        """Someone set a webhook for this bot (it is in use elsewhere): getUpdates answers 409."""
        with self._cond:
            self._bot(token).webhook = {"url": url, "secret_token": None}
            self._cond.notify_all()

    def start_foreign_poller(self, token: str) -> None:
        """Another program polls this bot: each of our getUpdates is terminated with 409."""
        with self._cond:
            bot = self._bot(token)
            bot.foreign_poller = True
            bot.poll_generation += 1
            self._cond.notify_all()

    def stop_foreign_poller(self, token: str) -> None:
        with self._cond:
            self._bot(token).foreign_poller = False

    def fail(self, token: str, method: str, status: int, description: str, *, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` by this bot answer this error."""
        with self._cond:
            self._bot(token).failures.setdefault(method.lower(), []).append([status, description, times])

    # --- the API ---------------------------------------------------------------------------------
    def _bot(self, token: str) -> Bot:
        try:
            return self._bots[token]
        except KeyError:
            raise KeyError("no bot with that token is served here") from None

    @staticmethod
    def _take_message_id(bot: Bot) -> int:
        found = bot.next_message_id
        bot.next_message_id += 1
        return found

    def _dispatch(self, token: str, method: str, params: dict) -> Any:
        name = method.lower()
        with self._cond:
            bot = self._bots.get(token)
            if bot is None:
                raise ApiError(401, "Unauthorized")
            queue = bot.failures.get(name)
            if queue:
                status, description, times = queue[0]
                queue[0][2] = times - 1
                if times <= 1:
                    queue.pop(0)
                bot.calls.append((method, status))
                raise ApiError(status, description)
        handler = getattr(self, f"_api_{name}", None)
        try:
            if handler is None:
                raise ApiError(404, "Not Found")
            result = handler(bot, params)
        except ApiError as exc:
            self._record(bot, method, exc.status)
            raise
        self._record(bot, method, 200)
        return result

    def _record(self, bot: Bot, method: str, status: int) -> None:
        with self._cond:
            bot.calls.append((method, status))
            self._cond.notify_all()

    def _api_getme(self, bot: Bot, params: dict) -> dict:
        return bot.as_user()

    def _api_getupdates(self, bot: Bot, params: dict) -> list[dict]:
        offset = as_int(params.get("offset"), 0)
        limit = max(1, min(as_int(params.get("limit"), 100), 100))
        timeout = max(0, min(as_int(params.get("timeout"), 0), MAX_POLL_SECONDS))
        deadline = time.monotonic() + timeout
        with self._cond:
            if bot.webhook["url"]:
                raise ApiError(409, CONFLICT_WEBHOOK)
            if bot.foreign_poller:
                raise ApiError(409, CONFLICT_POLLER)
            bot.poll_generation += 1
            generation = bot.poll_generation
            self._cond.notify_all()  # an older poll of this bot ends with 409
            while True:
                if offset > 0:
                    bot.updates = [u for u in bot.updates if u["update_id"] >= offset]
                elif offset < 0:
                    bot.updates = bot.updates[offset:]
                if bot.updates or self._stopping:
                    return json.loads(json.dumps(bot.updates[:limit]))
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(min(left, 0.2))
                if bot.poll_generation != generation:
                    raise ApiError(409, CONFLICT_POLLER)
                if self._bots.get(bot.token) is not bot:
                    raise ApiError(401, "Unauthorized")

    def _api_sendmessage(self, bot: Bot, params: dict) -> dict:
        chat_id = as_chat_id(params.get("chat_id"))
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        parse_mode = params.get("parse_mode") or None
        if parse_mode not in (None, "HTML", "MarkdownV2", "Markdown"):
            raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode!r}")
        if parse_mode == "HTML":
            problem = HTMLCheck.problem_in(text)
            if problem:
                raise ApiError(400, f"Bad Request: can't parse entities: {problem}")
        reply = params.get("reply_parameters") or {}
        if not isinstance(reply, dict):
            raise ApiError(400, "Bad Request: can't parse reply parameters JSON object")
        reply_to = as_int(reply.get("message_id") or params.get("reply_to_message_id"), 0) or None
        allow_without = truthy(reply.get("allow_sending_without_reply") or params.get("allow_sending_without_reply"))
        with self._cond:
            replied = bot.messages.get((chat_id, reply_to)) if reply_to else None
            if reply_to and replied is None and not allow_without:
                raise ApiError(400, "Bad Request: message to be replied not found")
            chat = next(
                (m["chat"] for (c, _), m in bot.messages.items() if c == chat_id),
                {"id": chat_id, "type": "private", "first_name": "Person"},
            )
            message: dict[str, Any] = {
                "message_id": self._take_message_id(bot),
                "from": bot.as_user(),
                "chat": chat,
                "date": int(time.time()),
                "text": text,
            }
            if replied is not None:
                message["reply_to_message"] = replied
            bot.messages[(chat_id, message["message_id"])] = message
            bot.sent.append(message)
            self._cond.notify_all()
            return message

    def _api_deletemessage(self, bot: Bot, params: dict) -> bool:
        chat_id = as_chat_id(params.get("chat_id"))
        message_id = as_int(params.get("message_id"), 0)
        with self._cond:
            if bot.messages.pop((chat_id, message_id), None) is None:
                raise ApiError(400, "Bad Request: message to delete not found")
            bot.deleted.append((chat_id, message_id))
            return True

    def _api_setwebhook(self, bot: Bot, params: dict) -> bool:
        url = params.get("url") or ""
        if url and not str(url).startswith(("https://", "http://")):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        with self._cond:
            bot.webhook = {"url": url, "secret_token": params.get("secret_token")}
            if truthy(params.get("drop_pending_updates")):
                bot.updates.clear()
            self._cond.notify_all()
            return True

    def _api_deletewebhook(self, bot: Bot, params: dict) -> bool:
        with self._cond:
            bot.webhook = {"url": "", "secret_token": None}
            if truthy(params.get("drop_pending_updates")):
                bot.updates.clear()
            return True

    def _api_getwebhookinfo(self, bot: Bot, params: dict) -> dict:
        with self._cond:
            url = bot.webhook["url"]
            return {"url": url, "has_custom_certificate": False, "pending_update_count": len(bot.updates)}

    def _api_setmycommands(self, bot: Bot, params: dict) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or not all(
            isinstance(c, dict) and isinstance(c.get("command"), str) and isinstance(c.get("description"), str)
            for c in commands
        ):
            raise ApiError(400, "Bad Request: can't parse commands JSON object")
        with self._cond:
            bot.commands = [{"command": c["command"], "description": c["description"]} for c in commands]
            return True

    def _api_deletemycommands(self, bot: Bot, params: dict) -> bool:
        with self._cond:
            bot.commands = []
            return True

    def _api_getmycommands(self, bot: Bot, params: dict) -> list[dict]:
        with self._cond:
            return list(bot.commands)

    def _api_sendchataction(self, bot: Bot, params: dict) -> bool:
        chat_id = as_chat_id(params.get("chat_id"))
        action = params.get("action")
        if not isinstance(action, str) or not action:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        with self._cond:
            bot.chat_actions.append((chat_id, action))
            return True

    def _api_answercallbackquery(self, bot: Bot, params: dict) -> bool:
        query_id = params.get("callback_query_id")
        if not query_id:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        with self._cond:
            bot.answered_callbacks.append(str(query_id))
            return True


# --- the wire format's parameters -----------------------------------------------------------------
def parse_params(query: str, raw: bytes, content_type: str) -> dict[str, Any]:
    """A call's parameters from its query string and its JSON or form body."""
    params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if raw:
        kind = content_type.split(";")[0].strip().lower()
        try:
            if kind == "application/json":
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise ApiError(400, "Bad Request: the request body must be a JSON object")
                params.update(body)
            elif kind == "application/x-www-form-urlencoded":
                params.update({k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()})
            else:
                raise ApiError(400, f"Bad Request: unsupported body type {kind or 'untyped'}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "Bad Request: can't parse the request body") from exc
    for key in JSON_PARAMS & params.keys():
        if isinstance(params[key], str):
            try:
                params[key] = json.loads(params[key])
            except json.JSONDecodeError as exc:
                raise ApiError(400, f"Bad Request: can't parse {key} JSON object") from exc
    return params


def as_int(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"Bad Request: {value!r} is not an integer") from exc


def as_chat_id(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, "Bad Request: chat not found") from exc


def truthy(value: Any) -> bool:
    return value in (True, "true", "True", "1", 1)


__all__ = ["ApiError", "HTMLCheck", "StandIn", "make_user", "mint_token", "parse_params"]
