"""Fixtures: a loopback Telegram Bot API, the bot running against it, and a chat to talk in.

``FakeBotApi`` speaks the Bot API's wire format (``/bot<token>/<method>``, answers
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": ..., "description": ...}``) for
getMe, getUpdates (long polling, offsets), sendMessage and deleteWebhook, so the real telebot
client is exercised and no test needs the internet.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional
from urllib.parse import parse_qsl, urlsplit

import pytest

import app as bot_app
import handlers

TOKEN = "123456:test-token-not-real"
_chat_ids = itertools.count(1001)


class ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


class FakeBotApi:
    """A Bot API on 127.0.0.1 and a free port; ``push`` queues updates, ``sent`` records replies."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.me = {"id": int(token.split(":")[0]), "is_bot": True, "first_name": "Test", "username": "test_bot"}
        self.sent: list[dict[str, Any]] = []  # every message the bot sent
        self.calls: list[str] = []  # every method called (token right or wrong), in order
        self.failures: dict[str, list[tuple[int, str]]] = {}  # method -> errors to answer next
        self._updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self._message_ids = itertools.count(1)
        self._cond = threading.Condition()
        self._stopping = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                params: dict[str, Any] = dict(parse_qsl(url.query))
                if raw and "json" in self.headers.get("Content-Type", ""):
                    params.update(json.loads(raw))
                elif raw:
                    params.update(parse_qsl(raw.decode()))
                parts = url.path.strip("/").split("/")
                with fake._cond:
                    fake.calls.append(parts[-1])
                try:
                    if len(parts) != 2 or not parts[0].startswith("bot"):
                        raise ApiError(404, "Not Found")
                    if parts[0][3:] != fake.token:
                        raise ApiError(401, "Unauthorized")
                    result = fake.call(parts[1], params)
                except ApiError as exc:
                    body = {"ok": False, "error_code": exc.status, "description": exc.description}
                    return self._send(exc.status, body)
                self._send(200, {"ok": True, "result": result})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        """A base URL, as TELEGRAM_API_URL may be given: the bot appends /bot{0}/{1}."""
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def start(self) -> FakeBotApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def fail(self, method: str, status: int, description: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` answer this error."""
        with self._cond:
            self.failures.setdefault(method.lower(), []).extend([(status, description)] * times)

    # --- what people send ----------------------------------------------------------------
    def push(self, chat_id: int, text: str, first_name: str = "Ada") -> None:
        """A person writes ``text`` in their private chat ``chat_id``."""
        user = {"id": chat_id, "is_bot": False, "first_name": first_name}
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "from": user,
            "chat": {"id": chat_id, "type": "private", "first_name": first_name},
            "date": int(time.time()),
            "text": text,
        }
        if text.startswith("/"):
            message["entities"] = [{"offset": 0, "length": len(text.split()[0]), "type": "bot_command"}]
        with self._cond:
            self._updates.append({"update_id": self._next_update_id, "message": message})
            self._next_update_id += 1
            self._cond.notify_all()

    def texts_to(self, chat_id: int) -> list[str]:
        with self._cond:
            return [m["text"] for m in self.sent if m["chat"]["id"] == chat_id]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; calls so far: {self.calls[-10:]}")
                self._cond.wait(min(left, 0.1))

    # --- the methods ---------------------------------------------------------------------
    def call(self, method: str, params: dict[str, Any]) -> Any:
        name = method.lower()
        with self._cond:
            queue = self.failures.get(name)
            if queue:
                status, description = queue.pop(0)
                raise ApiError(status, description)
        handler = getattr(self, f"_api_{name}", None)
        if handler is None:
            raise ApiError(404, "Not Found: method not found")
        return handler(params)

    def _api_getme(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(self.me)

    def _api_getupdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), 5.0)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if offset:  # confirmed updates are forgotten
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
                left = deadline - time.monotonic()
                if self._updates or self._stopping or left <= 0:
                    return list(self._updates[:100])
                self._cond.wait(min(left, 0.1))

    def _api_sendmessage(self, params: dict[str, Any]) -> dict[str, Any]:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        try:
            chat_id = int(params["chat_id"])
        except (KeyError, ValueError):
            raise ApiError(400, "Bad Request: chat not found") from None
        message = {
            "message_id": next(self._message_ids),
            "from": dict(self.me),
            "chat": {"id": chat_id, "type": "private"},
            "date": int(time.time()),
            "text": text,
        }
        with self._cond:
            self.sent.append(message)
            self._cond.notify_all()
        return message

    def _api_deletewebhook(self, params: dict[str, Any]) -> bool:
        return True


class Chat:
    """One person's private chat with the running bot."""

    def __init__(self, api: FakeBotApi, first_name: str = "Ada") -> None:
        self.api = api
        self.id = next(_chat_ids)
        self.first_name = first_name

    def send(self, text: str, timeout: float = 10.0) -> str:
        """Say ``text``; return the bot's first reply to it."""
        return self.send_expecting(text, 1, timeout)[0]

    def send_expecting(self, text: str, replies: int, timeout: float = 10.0) -> list[str]:
        """Say ``text``; wait for ``replies`` messages from the bot and return them."""
        before = len(self.api.texts_to(self.id))
        self.api.push(self.id, text, first_name=self.first_name)
        self.api.wait_for(lambda: len(self.api.texts_to(self.id)) >= before + replies, timeout)
        return self.api.texts_to(self.id)[before : before + replies]


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def bot_api() -> Iterator[FakeBotApi]:
    api = FakeBotApi().start()
    yield api
    api.stop()


@pytest.fixture
def start_bot(bot_api: FakeBotApi, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., bot_app.BotApp]]:
    """Start the bot against the fake; ``first=fn`` registers fn(bot)'s handlers before the project's."""
    monkeypatch.setattr(bot_app, "BACKOFF_FIRST", 0.05)
    started: list[bot_app.BotApp] = []

    def start(
        *, first: Optional[Callable[[Any], None]] = None, token: str = TOKEN, api_url: Optional[str] = None
    ) -> bot_app.BotApp:
        if first is not None:
            project_register = handlers.register

            def register(bot: Any) -> None:
                first(bot)
                project_register(bot)

            monkeypatch.setattr(handlers, "register", register)
        app = bot_app.BotApp(token, api_url=api_url or bot_api.base_url, release="test", poll_timeout=1)
        started.append(app)
        return app.start()

    yield start
    for app in started:
        app.stop(wait=0)  # its poller ends as soon as its long poll returns


@pytest.fixture
def bot(start_bot: Callable[..., bot_app.BotApp]) -> bot_app.BotApp:
    """The project's bot, polling the fake Bot API."""
    return start_bot()


@pytest.fixture
def chat(bot: bot_app.BotApp, bot_api: FakeBotApi) -> Chat:
    """A fresh private chat with the running bot: ``chat.send("/hello Ada") == "Hello, Ada!"``."""
    return Chat(bot_api)
