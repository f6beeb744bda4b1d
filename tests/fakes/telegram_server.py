"""The factory bot's test double: a loopback Telegram Bot API for ONE token, speaking its wire
format at ``/bot<token>/<method>``.

The real client (pyTelegramBotAPI) talks to it unchanged once ``TELEGRAM_API_URL`` points here.
Parameters arrive as Telegram accepts them: in the query string, a JSON body or a form body.
Answers are ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N, "description": ...,
"parameters": {"retry_after": N}}``.

What a test does with it:
- push updates a person "sends" (``say``, or ``make_update`` + ``push``); ``getUpdates`` serves them
  with Telegram's ``offset`` / long-polling ``timeout`` semantics; ``make_update`` alone builds the
  body a webhook would receive;
- read what the bot sent (``sent``, ``texts_to``, ``wait_for_sent``) and every call (``calls``);
- script failures: the next N calls of a method answer 429 with ``retry_after`` (``rate_limit``),
  403 "bot was blocked by the user" (``forbid``), 400 "can't parse entities" (``reject_entities``),
  5xx (``server_error``); ``block(chat_id)`` makes a chat refuse for good; ``hold_answer`` acts on
  the next call of a method at once but answers it only after a delay (the answer of a call
  Telegram accepted, still on its way when the client dies or gives up).
Thread-safe: the HTTP server answers each request on its own thread.

The wire format (parameters, errors, the HTML check) is the product's stand-in's
(``orchestrator.telegram.standin``), which serves several bots at once; this double keeps the
failure scripting and the call log the delivery tests need.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from orchestrator.telegram.standin import ApiError, HTMLCheck, make_user
from orchestrator.telegram.standin import as_chat_id as _chat_id
from orchestrator.telegram.standin import as_int as _int
from orchestrator.telegram.standin import parse_params as _params
from orchestrator.telegram.standin import truthy as _truthy

TOKEN = "7000001:AAH-fake-token-for-the-factory-tests"


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None
    times: int = 1


@dataclass(frozen=True)
class Call:
    method: str
    params: dict[str, Any]
    status: int
    at: float


@dataclass(frozen=True)
class Sent:
    """One message the bot sent (a successful sendMessage)."""

    message_id: int
    chat_id: int
    text: str
    parse_mode: str | None
    reply_to_message_id: int | None
    at: float


@dataclass
class _Chat:
    id: int
    type: str = "private"
    first_name: str = ""
    username: str | None = None

    def as_dict(self) -> dict:
        chat: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.type == "private":
            chat["first_name"] = self.first_name or "Person"
            if self.username:
                chat["username"] = self.username
        else:
            chat["title"] = self.first_name or "A group"
        return chat


user = make_user  # a Telegram User object


class FakeTelegram:
    def __init__(self, token: str = TOKEN):
        self.token = token
        self.bot_user = {
            "id": int(token.split(":")[0]),
            "is_bot": True,
            "first_name": "Factory",
            "username": "factory_test_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[Call] = []
        self.sent: list[Sent] = []
        self.deleted: list[tuple[int, int]] = []
        self.webhook: dict[str, Any] = {"url": "", "secret_token": None}
        self.blocked_chats: set[int] = set()
        self._failures: dict[str, list[Failure]] = {}
        self._holds: dict[str, list[float]] = {}
        self._updates: list[dict] = []  # not yet confirmed by an offset
        self._messages: dict[tuple[int, int], dict] = {}  # (chat id, message id) → message
        self._chats: dict[int, _Chat] = {}
        self._next_update_id = 800_000_001
        self._next_message_id = 1
        self._poll_generation = 0
        self._stopping = False
        self._cond = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
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
                token, method = parts[0][3:], parts[1]
                params: dict[str, Any] = {}
                try:
                    params = _params(url.query, raw, self.headers.get("Content-Type", ""))
                    if token != fake.token:
                        raise ApiError(401, "Unauthorized")
                    result = fake._dispatch(method, params)
                except ApiError as exc:
                    fake._record(method, params, exc.status)
                    return self._send(exc.status, exc.body())
                fake._record(method, params, 200)
                hold = fake._take_hold(method)
                if hold:
                    time.sleep(hold)
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # --- life -----------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        """The value for TELEGRAM_API_URL (telebot's API_URL): ``{0}`` the token, ``{1}`` the method."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/bot{{0}}/{{1}}"

    def worker_env(self) -> dict[str, str]:
        """Environment for a child process (a Celery worker) that must talk to this fake."""
        return {"TELEGRAM_API_URL": self.api_url, "TELEGRAM_BOT_TOKEN": self.token}

    def start(self) -> FakeTelegram:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    # --- scripting failures ---------------------------------------------------------------
    def fail(
        self, method: str, status: int, description: str, *, times: int = 1, retry_after: int | None = None
    ) -> None:
        """The next ``times`` calls of ``method`` answer this error."""
        with self._cond:
            self._failures.setdefault(method.lower(), []).append(Failure(status, description, retry_after, times))

    def rate_limit(self, method: str = "sendMessage", *, retry_after: int = 1, times: int = 1) -> None:
        self.fail(method, 429, f"Too Many Requests: retry after {retry_after}", times=times, retry_after=retry_after)

    def forbid(self, method: str = "sendMessage", *, times: int = 1) -> None:
        self.fail(method, 403, "Forbidden: bot was blocked by the user", times=times)

    def reject_entities(self, method: str = "sendMessage", *, times: int = 1) -> None:
        self.fail(
            method, 400, 'Bad Request: can\'t parse entities: Unsupported start tag "x" at byte offset 0', times=times
        )

    def server_error(self, method: str = "sendMessage", *, times: int = 1, status: int = 502) -> None:
        self.fail(method, status, "Bad Gateway" if status == 502 else "Internal Server Error", times=times)

    def hold_answer(self, method: str = "sendMessage", *, seconds: float, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` take effect at once, but are answered ``seconds`` later."""
        with self._cond:
            self._holds.setdefault(method.lower(), []).extend([seconds] * times)

    def _take_hold(self, method: str) -> float:
        with self._cond:
            queue = self._holds.get(method.lower())
            return queue.pop(0) if queue else 0.0

    def block(self, chat_id: int) -> None:
        """The person blocked the bot: every later message to the chat is refused with 403."""
        with self._cond:
            self.blocked_chats.add(int(chat_id))

    # --- what people send -----------------------------------------------------------------
    def make_update(
        self,
        *,
        from_user: dict,
        text: str | None,
        chat: dict | None = None,
        reply_to_message_id: int | None = None,
        extra: dict | None = None,
    ) -> dict:
        """An Update carrying a new message from ``from_user`` (in their private chat unless ``chat``)."""
        with self._cond:
            chat_obj = self._chat(
                chat
                or {
                    "id": from_user["id"],
                    "type": "private",
                    "first_name": from_user.get("first_name", ""),
                    "username": from_user.get("username"),
                }
            )
            message: dict[str, Any] = {
                "message_id": self._take_message_id(),
                "from": from_user,
                "chat": chat_obj.as_dict(),
                "date": int(time.time()),
            }
            if text is not None:
                message["text"] = text
                if text.startswith("/"):
                    command = text.split()[0]
                    message["entities"] = [{"offset": 0, "length": len(command), "type": "bot_command"}]
            if reply_to_message_id is not None:
                message["reply_to_message"] = self._messages.get(
                    (chat_obj.id, reply_to_message_id),
                    {"message_id": reply_to_message_id, "chat": chat_obj.as_dict(), "date": int(time.time())},
                )
            message.update(extra or {})
            self._messages[(chat_obj.id, message["message_id"])] = message
            update = {"update_id": self._next_update_id, "message": message}
            self._next_update_id += 1
            return update

    def push(self, *updates: dict) -> None:
        """Queue updates for getUpdates."""
        with self._cond:
            self._updates.extend(updates)
            self._cond.notify_all()

    def say(self, from_user: dict, text: str, *, reply_to_message_id: int | None = None) -> dict:
        """A person writes to the bot (delivered through getUpdates)."""
        update = self.make_update(from_user=from_user, text=text, reply_to_message_id=reply_to_message_id)
        self.push(update)
        return update

    @property
    def pending_updates(self) -> int:
        with self._cond:
            return len(self._updates)

    # --- what the bot sent ----------------------------------------------------------------
    def texts_to(self, chat_id: int) -> list[str]:
        with self._cond:
            return [s.text for s in self.sent if s.chat_id == int(chat_id)]

    def calls_of(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.method.lower() == method.lower()]

    def wait_for_sent(self, predicate: Callable[[Sent], bool], timeout: float = 10.0) -> Sent:
        """The first sent message matching ``predicate``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((s for s in self.sent if predicate(s)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    sent = "\n".join(f"  {s.chat_id}: {s.text!r}" for s in self.sent)
                    raise AssertionError(f"no matching message was sent in {timeout}s; sent:\n{sent}")
                self._cond.wait(min(left, 0.2))

    # --- the API ----------------------------------------------------------------------------
    def _record(self, method: str, params: dict, status: int) -> None:
        with self._cond:
            self.calls.append(Call(method, params, status, time.monotonic()))
            self._cond.notify_all()

    def _take_message_id(self) -> int:
        found = self._next_message_id
        self._next_message_id += 1
        return found

    def _chat(self, raw: dict) -> _Chat:
        chat_id = int(raw["id"])
        if chat_id not in self._chats:
            self._chats[chat_id] = _Chat(
                chat_id,
                raw.get("type", "private"),
                raw.get("first_name") or raw.get("title") or "",
                raw.get("username"),
            )
        return self._chats[chat_id]

    def _dispatch(self, method: str, params: dict) -> Any:
        name = method.lower()
        with self._cond:
            queue = self._failures.get(name)
            if queue:
                failure = queue[0]
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
                raise ApiError(failure.status, failure.description, failure.retry_after)
        handler = getattr(self, f"_api_{name}", None)
        if handler is None:
            raise ApiError(404, "Not Found")
        return handler(params)

    def _api_getme(self, params: dict) -> dict:
        return dict(self.bot_user)

    def _api_getupdates(self, params: dict) -> list[dict]:
        offset = _int(params.get("offset"), 0)
        limit = max(1, min(_int(params.get("limit"), 100), 100))
        timeout = max(0, min(_int(params.get("timeout"), 0), 50))
        deadline = time.monotonic() + timeout
        with self._cond:
            if self.webhook["url"]:
                raise ApiError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            self._poll_generation += 1
            generation = self._poll_generation
            self._cond.notify_all()
            while True:
                if offset > 0:
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                elif offset < 0:
                    self._updates = self._updates[offset:]
                if self._updates or self._stopping:
                    return list(self._updates[:limit])
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(min(left, 0.2))
                if self._poll_generation != generation:
                    raise ApiError(
                        409,
                        "Conflict: terminated by other getUpdates request; "
                        "make sure that only one bot instance is running",
                    )

    def _api_sendmessage(self, params: dict) -> dict:
        chat_id = _chat_id(params.get("chat_id"))
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
        reply_to = _int(reply.get("message_id") or params.get("reply_to_message_id"), 0) or None
        allow_without = bool(reply.get("allow_sending_without_reply") or params.get("allow_sending_without_reply"))
        with self._cond:
            if chat_id in self.blocked_chats:
                raise ApiError(403, "Forbidden: bot was blocked by the user")
            chat = self._chats.get(chat_id) or self._chat({"id": chat_id, "type": "private"})
            replied = self._messages.get((chat_id, reply_to)) if reply_to else None
            if reply_to and replied is None and not allow_without:
                raise ApiError(400, "Bad Request: message to be replied not found")
            message: dict[str, Any] = {
                "message_id": self._take_message_id(),
                "from": dict(self.bot_user),
                "chat": chat.as_dict(),
                "date": int(time.time()),
                "text": text,
            }
            if replied is not None:
                message["reply_to_message"] = replied
            self._messages[(chat_id, message["message_id"])] = message
            self.sent.append(
                Sent(
                    message["message_id"],
                    chat_id,
                    text,
                    parse_mode,
                    reply_to if replied is not None else None,
                    time.monotonic(),
                )
            )
            self._cond.notify_all()
            return message

    def _api_deletemessage(self, params: dict) -> bool:
        chat_id = _chat_id(params.get("chat_id"))
        message_id = _int(params.get("message_id"), 0)
        with self._cond:
            if self._messages.pop((chat_id, message_id), None) is None:
                raise ApiError(400, "Bad Request: message to delete not found")
            self.deleted.append((chat_id, message_id))
            return True

    def _api_setwebhook(self, params: dict) -> bool:
        with self._cond:
            self.webhook = {"url": params.get("url") or "", "secret_token": params.get("secret_token")}
            if _truthy(params.get("drop_pending_updates")):
                self._updates.clear()
            return True

    def _api_deletewebhook(self, params: dict) -> bool:
        with self._cond:
            self.webhook = {"url": "", "secret_token": None}
            if _truthy(params.get("drop_pending_updates")):
                self._updates.clear()
            return True

    def _api_getwebhookinfo(self, params: dict) -> dict:
        with self._cond:
            return {
                "url": self.webhook["url"],
                "has_custom_certificate": False,
                "pending_update_count": len(self._updates),
            }


__all__ = ["TOKEN", "Call", "FakeTelegram", "Sent", "user"]
