"""/health: what the platform reads to know the bot is up and polling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TOKEN, get_json

import app as bot_app


def _health(app: bot_app.BotApp) -> dict:
    status, body = get_json(f"http://127.0.0.1:{app.health_port}/health")
    assert status == 200
    return body


def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_health_says_polling_once_get_updates_succeeded(bot, bot_api):
    _wait_until(lambda: _health(bot)["polling"])
    body = _health(bot)
    assert body["status"] == "ok"
    assert body["release"] == "test"
    assert body["bot"] == "test_bot"
    assert body["last_poll"].endswith("+00:00")
    assert "getMe" in bot_api.calls and "getUpdates" in bot_api.calls


def test_health_is_not_polling_while_the_token_is_refused(start_bot, bot_api, capfd):
    wrong = "999999:wrong-token-must-not-leak"
    app = start_bot(token=wrong)
    _wait_until(lambda: bot_api.calls.count("getMe") >= 2)  # refused (401), retried with backoff
    body = _health(app)
    assert (body["status"], body["polling"], body["last_poll"], body["bot"]) == ("ok", False, None, None)
    err = capfd.readouterr().err
    assert "401" in err and "wrong-token-must-not-leak" not in err


def test_errors_on_stderr_never_carry_the_token(start_bot, capfd):
    # Nothing listens there: requests' own error message names the URL, token included.
    secret = "424242:connection-error-secret"
    start_bot(token=secret, api_url=f"http://127.0.0.1:{_closed_port()}")
    deadline = time.monotonic() + 5
    err = ""
    while "polling failed" not in err:
        assert time.monotonic() < deadline, err
        time.sleep(0.05)
        err += capfd.readouterr().err
    assert secret not in err and "connection-error-secret" not in err


def test_unknown_path_is_a_json_404(bot):
    assert get_json(f"http://127.0.0.1:{bot.health_port}/nope") == (404, {"error": "not found"})


def test_python_app_py_polls_serves_health_and_stops_on_sigterm(bot_api):
    port = _closed_port()
    env = {
        **os.environ,
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": bot_api.base_url,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "RELEASE": "r42",
    }
    root = Path(bot_app.__file__).resolve().parent
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        body = {}
        deadline = time.monotonic() + 15
        while not body.get("polling"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
            try:
                body = get_json(f"http://127.0.0.1:{port}/health")[1]
            except OSError:
                continue
        assert (body["status"], body["release"], body["bot"]) == ("ok", "r42", "test_bot")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert TOKEN not in out + err


def test_app_py_without_a_token_exits_with_a_clear_message():
    root = Path(bot_app.__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
    env["PORT"] = "0"
    proc = subprocess.run([sys.executable, "app.py"], cwd=root, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "TELEGRAM_BOT_TOKEN" in proc.stderr


def _closed_port() -> int:
    from conftest import free_port

    return free_port()
