"""Checks for a Telegram bot's release: is it polling, and does it answer its conversation checks.

A bot release (templates/telegram_bot) serves `GET /health` on its internal port with
`{"release", "polling", "last_poll"}`; `polling` turns true once a `getUpdates` has succeeded.
Before a bot goes live with its real token, the release is run against the factory's own
loopback Bot API stand-in with a throwaway token and must answer every conversation check
(`ProjectSpec.conversation`); only then is it started with the real token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from orchestrator.deploy.local import CheckResult, wait_healthy
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

    def ready(answer: dict) -> str | None:
        if not answer.get("polling"):
            return "the bot has not polled Telegram successfully yet"
        polled = _parse_time(answer.get("last_poll"))
        if since is not None and (polled is None or polled < since):
            return "the bot's last successful poll is older than this start"
        return None

    return wait_healthy(
        pid=pid,
        url=url,
        path=path,
        release=release,
        timeout=timeout,
        alive=alive,
        ready=ready,
        waiting_for="polling",
        max_delay=0.5,
    )


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
