"""Checks for a Telegram bot's release: is it polling, and does it answer its conversation checks.

A bot release (templates/telegram_bot) serves `GET /health` on its internal port with
`{"release", "polling", "last_poll"}`; `polling` turns true once a `getUpdates` has succeeded.
Before a bot goes live with its real token, the release is run against the factory's own
loopback Bot API stand-in with a throwaway token and must answer every conversation check
(`ProjectSpec.conversation`); only then is it started with the real token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime

from orchestrator.deploy.local import CheckResult, http
from orchestrator.procs import process_alive
from orchestrator.telegram.standin import StandIn
from projects.specs import ConversationCheck

CHECK_USER = {"id": 777000111, "is_bot": False, "first_name": "Factory", "username": "factory_check"}


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def wait_polling(
    *,
    pid: int,
    url: str,
    path: str,
    release: str,
    timeout: float,
    since: datetime | None = None,
    alive: Callable[[], bool] | None = None,
) -> CheckResult:
    """Wait until the release reports a successful getUpdates (after `since`, when given).
    ``alive`` tells whether the release still runs (default: its process ``pid``)."""
    deadline = time.monotonic() + timeout
    delay, last = 0.05, "no answer yet"
    while time.monotonic() < deadline:
        if not (alive() if alive is not None else process_alive(pid)):
            return CheckResult(False, "the bot process exited")
        status, body = http(url + path.lstrip("/"))
        if status == 200:
            try:
                answer = json.loads(body)
            except json.JSONDecodeError:
                answer = {}
            if str(answer.get("release")) != release:
                last = f"{path} answered for release {answer.get('release')!r}, not {release!r}"
            elif not answer.get("polling"):
                last = "the bot has not polled Telegram successfully yet"
            else:
                polled = _parse_time(answer.get("last_poll"))
                if since is None or (polled is not None and polled >= since):
                    return CheckResult(True, "polling")
                last = "the bot's last successful poll is older than this start"
        else:
            last = f"{path} answered {status}: {body[:200]}"
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    return CheckResult(False, f"not polling after {timeout:.0f}s: {last}")


def converse(standin: StandIn, token: str, checks: list[ConversationCheck], timeout: float) -> list[CheckResult]:
    """Say each check's message to the bot through the stand-in; its reply must contain the text."""
    results = []
    for check in checks:
        before = len(standin.sent(token, chat_id=CHECK_USER["id"]))
        standin.say(token, check.send, user=CHECK_USER)
        deadline = time.monotonic() + timeout
        replies: list[str] = []
        while time.monotonic() < deadline:
            replies = [str(m.get("text", "")) for m in standin.sent(token, chat_id=CHECK_USER["id"])[before:]]
            if any(check.expect_contains in text for text in replies):
                break
            time.sleep(0.05)
        ok = any(check.expect_contains in text for text in replies)
        said = " | ".join(replies)[:200] if replies else "no reply"
        results.append(CheckResult(ok, f"{check.send!r} -> {said} (expected {check.expect_contains!r})"))
    return results
