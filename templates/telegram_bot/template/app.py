"""A Telegram bot on pyTelegramBotAPI: the runner (long polling), /health, and the entry point.

The bot's commands live in handlers.py: ``register(bot)`` adds telebot handlers to the bot.
This file stays the same for every project.

Environment:
  TELEGRAM_BOT_TOKEN  the bot's token (required; never printed)
  TELEGRAM_API_URL    the Bot API: a base URL such as https://api.telegram.org or
                      http://127.0.0.1:8081 (``/bot{0}/{1}`` is appended), or a telebot format
                      string with ``{0}`` (the token) and ``{1}`` (the method); default Telegram's
  PORT, HOST          where the health server listens (PORT required; HOST default 127.0.0.1)
  RELEASE             the release id /health reports (default "dev")

``GET /health`` answers 200 with JSON: {"status": "ok", "release": ..., "polling": true|false,
"last_poll": "<ISO time of the last successful getUpdates>" | null, "bot": "<username>" | null}.
"polling" is true while a getUpdates has succeeded within the last POLL_FRESH_SECONDS.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import urlsplit

import telebot
from telebot import apihelper

import handlers

DEFAULT_API_URL = "https://api.telegram.org"
POLL_TIMEOUT = 25  # seconds one getUpdates waits for updates on Telegram's side (long polling)
POLL_FRESH_SECONDS = 60  # "polling" in /health: a getUpdates succeeded at most this long ago
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


def api_url_format(value: Optional[str]) -> str:
    """telebot's API_URL from TELEGRAM_API_URL: a base gets ``/bot{0}/{1}`` appended."""
    value = (value or "").strip() or DEFAULT_API_URL
    if "{0}" in value and "{1}" in value:
        return value
    return value.rstrip("/") + "/bot{0}/{1}"


def log(message: str, secret: str = "") -> None:
    """One line on stderr; the token (``secret``) is never printed."""
    if secret:
        message = message.replace(secret, "***")
    print(message, file=sys.stderr, flush=True)


class PollState:
    """What /health reports about polling; written by the poller, read by the health server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_poll: Optional[datetime] = None
        self._last_poll_monotonic: Optional[float] = None
        self.bot_username: Optional[str] = None

    def polled(self) -> None:
        with self._lock:
            self._last_poll = datetime.now(timezone.utc)
            self._last_poll_monotonic = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            fresh = (
                self._last_poll_monotonic is not None
                and time.monotonic() - self._last_poll_monotonic <= POLL_FRESH_SECONDS
            )
            return {
                "polling": fresh,
                "last_poll": self._last_poll.isoformat() if self._last_poll else None,
                "bot": self.bot_username,
            }


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: PollState, release: str) -> None:
        super().__init__(address, HealthHandler)
        self.state = state
        self.release = release


class HealthHandler(BaseHTTPRequestHandler):
    server: HealthServer
    server_version = "factory-telegram-bot"

    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/health":
            self._send(200, {"status": "ok", "release": self.server.release, **self.server.state.snapshot()})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        self._send(404, {"error": "not found"})

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class BotApp:
    """The bot (handlers from handlers.register), its polling loop and its health server."""

    def __init__(
        self,
        token: str,
        *,
        api_url: Optional[str] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        release: str = "dev",
        poll_timeout: int = POLL_TIMEOUT,
    ) -> None:
        if not token:
            raise ValueError("the bot token is empty")
        self.token = token
        self.poll_timeout = poll_timeout
        self.state = PollState()
        self.offset: Optional[int] = None
        self._stop = threading.Event()
        # telebot reads the Bot API's address from this module global; this process runs one bot.
        apihelper.API_URL = api_url_format(api_url)
        self.bot = telebot.TeleBot(token, threaded=False)
        handlers.register(self.bot)
        self.health = HealthServer((host, port), self.state, release)
        self._threads: list[threading.Thread] = []

    @property
    def health_port(self) -> int:
        return self.health.server_port

    def start(self) -> BotApp:
        for target, name in ((self._serve_health, "health"), (self._poll_forever, "poller")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, wait: float = 5.0) -> None:
        """Stop polling (a long poll in flight is left to end by itself) and the health server."""
        self._stop.set()
        if self._threads:  # shutdown() waits for serve_forever(), so only once it was started
            self.health.shutdown()
        self.health.server_close()
        for thread in self._threads:
            thread.join(timeout=wait)

    def _serve_health(self) -> None:
        self.health.serve_forever(poll_interval=0.1)

    def _poll_forever(self) -> None:
        """getUpdates in a loop; every error is logged and retried with backoff."""
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # the loop must outlive any error: log it, wait, go on
                log(f"polling failed ({type(exc).__name__}): {exc}; retrying in {backoff:g}s", self.token)
                self._after_error(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            else:
                backoff = BACKOFF_FIRST

    def poll_once(self) -> int:
        """One getUpdates (and getMe until it has worked once); handle what came. Returns the count."""
        if self.state.bot_username is None:
            self.state.bot_username = self.bot.get_me().username
            log(f"polling as @{self.state.bot_username}")
        # The first poll is short, so /health says "polling" within a second of the start.
        wait = self.poll_timeout if self.state.snapshot()["last_poll"] else min(1, self.poll_timeout)
        updates = self.bot.get_updates(offset=self.offset, timeout=wait + 10, long_polling_timeout=wait)
        self.state.polled()
        if updates:
            # Confirmed by the next getUpdates: an update is handled once, even when a handler fails.
            self.offset = updates[-1].update_id + 1
            for update in updates:
                self._handle(update)
        return len(updates)

    def _handle(self, update: Any) -> None:
        try:
            self.bot.process_new_updates([update])
        except Exception:  # a handler bug costs its update, never the bot
            log("a handler failed:\n" + traceback.format_exc(), self.token)

    def _after_error(self, exc: Exception) -> None:
        """A webhook set on this token blocks getUpdates (409): remove it, polling is our mode."""
        description = str(getattr(exc, "description", "") or "")
        if getattr(exc, "error_code", None) == 409 and "webhook" in description.lower():
            try:
                self.bot.delete_webhook()
                log("removed the webhook set on this bot, so that long polling works")
            except Exception as again:
                log(f"could not remove the webhook ({type(again).__name__}): {again}", self.token)


def main() -> int:
    """Poll and serve /health until SIGTERM or SIGINT, then exit 0."""
    token = os.environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    if not token:
        log("TELEGRAM_BOT_TOKEN must be set to the bot's token")
        return 2
    try:
        port = int(os.environ["PORT"])
    except (KeyError, ValueError):
        log("PORT must be set to a port number (the health server's)")
        return 2
    host = os.environ.get("HOST", "127.0.0.1")
    release = os.environ.get("RELEASE", "dev")
    app = BotApp(token, api_url=os.environ.get("TELEGRAM_API_URL"), host=host, port=port, release=release)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    app.start()
    log(f"health on http://{host}:{app.health_port}/health (release {release}); long polling")
    while not stopped.wait(1.0):
        pass
    app.stop(wait=0.5)  # a long poll in flight ends with the process
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
