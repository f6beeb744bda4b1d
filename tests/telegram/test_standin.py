"""The loopback Bot API stand-in, through the real client library (pyTelegramBotAPI's apihelper)
and plain HTTP: several bots at once, Telegram's errors, and what a person and a bot do."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import pytest
from telebot import apihelper, types

from orchestrator.telegram.standin import CONFLICT_POLLER, CONFLICT_WEBHOOK, StandIn, make_user


@pytest.fixture
def standin():
    server = StandIn().start()
    previous = apihelper.API_URL
    apihelper.API_URL = server.api_url
    yield server
    apihelper.API_URL = previous
    server.stop()


def call(standin: StandIn, token: str, method: str, **params) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{standin.base_url}/bot{token}/{method}",
        data=json.dumps(params).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_each_token_is_its_own_bot_with_a_well_formed_token(standin):
    first, second = standin.add_bot("first_bot"), standin.add_bot()

    assert re.fullmatch(r"[0-9]+:[A-Za-z0-9_-]{35}", first) and re.fullmatch(r"[0-9]+:[A-Za-z0-9_-]{35}", second)
    me1, me2 = apihelper.get_me(first), apihelper.get_me(second)
    assert me1["username"] == "first_bot" and me1["is_bot"] is True
    assert me1["id"] == int(first.split(":")[0]) and me2["id"] == int(second.split(":")[0])
    assert me2["username"].endswith("_bot") and me1["id"] != me2["id"]
    assert standin.base_url.startswith("http://127.0.0.1:") and standin.api_url.endswith("/bot{0}/{1}")


def test_an_unknown_token_is_401_and_an_unknown_method_404(standin):
    token = standin.add_bot()

    assert call(standin, "123456:" + "x" * 35, "getMe") == (
        401,
        {"ok": False, "error_code": 401, "description": "Unauthorized"},
    )
    status, body = call(standin, token, "sendInvoiceOfTheFuture")
    assert status == 404 and body["error_code"] == 404 and body["ok"] is False
    with pytest.raises(apihelper.ApiTelegramException) as caught:
        apihelper.get_me("42:" + "y" * 35)
    assert caught.value.error_code == 401
    standin.revoke(token)
    assert call(standin, token, "getMe")[0] == 401


def test_say_is_served_by_get_updates_and_sent_messages_are_read_back(standin):
    token, other = standin.add_bot("echo_bot"), standin.add_bot("quiet_bot")
    ada = make_user(4242)
    update = standin.say(token, "/hello Ada", user=ada)

    updates = apihelper.get_updates(token, offset=None, limit=10, long_polling_timeout=1)
    assert [u["update_id"] for u in updates] == [update["update_id"]]
    assert updates[0]["message"]["text"] == "/hello Ada" and updates[0]["message"]["chat"]["id"] == 4242
    assert apihelper.get_updates(other, long_polling_timeout=1) == []  # another bot's queue

    replied = types.ReplyParameters(message_id=update["message"]["message_id"])
    message = apihelper.send_message(token, 4242, "Hello, Ada!", reply_parameters=replied)
    reply = standin.wait_for_reply(token, 4242, "Hello, Ada")
    assert reply["message_id"] == message["message_id"]
    assert reply["reply_to_message"]["message_id"] == update["message"]["message_id"]
    assert [m["text"] for m in standin.sent(token, chat_id=4242)] == ["Hello, Ada!"]
    assert standin.sent(other) == [] and standin.sent(token, chat_id=1) == []
    # An offset confirms: the update is not served again.
    assert apihelper.get_updates(token, offset=update["update_id"] + 1, long_polling_timeout=1) == []
    assert standin.pending(token) == 0


def test_a_long_poll_waits_for_a_message_and_returns_when_it_comes(standin):
    token = standin.add_bot()
    threading.Timer(0.3, lambda: standin.say(token, "hi")).start()

    started = time.monotonic()
    updates = apihelper.get_updates(token, long_polling_timeout=5)

    assert [u["message"]["text"] for u in updates] == ["hi"] and time.monotonic() - started < 4


def test_two_pollers_overlapping_end_the_older_with_409(standin):
    token = standin.add_bot()
    outcome: dict = {}

    def older():
        outcome["status"] = call(standin, token, "getUpdates", timeout=5)

    thread = threading.Thread(target=older)
    thread.start()
    time.sleep(0.3)
    assert call(standin, token, "getUpdates", timeout=0) == (200, {"ok": True, "result": []})
    thread.join(10)

    assert outcome["status"] == (409, {"ok": False, "error_code": 409, "description": CONFLICT_POLLER})


def test_a_foreign_poller_and_a_webhook_make_get_updates_409(standin):
    polled, hooked = standin.add_bot(), standin.add_bot()
    standin.start_foreign_poller(polled)
    standin.set_webhook(hooked, "https://elsewhere.example/hook")

    with pytest.raises(apihelper.ApiTelegramException) as first:
        apihelper.get_updates(polled, long_polling_timeout=1)
    with pytest.raises(apihelper.ApiTelegramException) as second:
        apihelper.get_updates(hooked, long_polling_timeout=1)

    assert (first.value.error_code, first.value.description) == (409, CONFLICT_POLLER)
    assert (second.value.error_code, second.value.description) == (409, CONFLICT_WEBHOOK)
    assert apihelper.get_webhook_info(hooked)["url"] == "https://elsewhere.example/hook"
    apihelper.delete_webhook(hooked)
    standin.stop_foreign_poller(polled)
    assert apihelper.get_updates(hooked, long_polling_timeout=1) == []
    assert apihelper.get_updates(polled, long_polling_timeout=1) == []


def test_commands_chat_actions_callbacks_and_deleting_messages(standin):
    token = standin.add_bot()
    update = standin.say(token, "secret stuff")
    chat_id, message_id = update["message"]["chat"]["id"], update["message"]["message_id"]

    status, _ = call(standin, token, "setMyCommands", commands=[{"command": "roll", "description": "a die"}])
    assert status == 200
    assert call(standin, token, "getMyCommands")[1]["result"] == [{"command": "roll", "description": "a die"}]
    assert call(standin, token, "deleteMyCommands")[1]["result"] is True and standin.commands(token) == []
    assert call(standin, token, "sendChatAction", chat_id=chat_id, action="typing")[0] == 200
    assert call(standin, token, "answerCallbackQuery", callback_query_id="q1")[0] == 200
    assert apihelper.delete_message(token, chat_id, message_id) is True
    assert standin.deleted(token, chat_id) == [message_id]
    assert call(standin, token, "deleteMessage", chat_id=chat_id, message_id=message_id)[0] == 400


def test_form_encoded_bodies_are_read_too(standin):
    token = standin.add_bot()
    request = urllib.request.Request(
        f"{standin.base_url}/bot{token}/sendMessage",
        data=b"chat_id=5&text=hello+there",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = json.loads(answer.read())

    assert body["ok"] is True and body["result"]["text"] == "hello there"
    assert standin.sent(token, chat_id=5)[0]["text"] == "hello there"


def test_botapi_command_serves_bots_until_stopped(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.Popen(
        [sys.executable, "manage.py", "botapi", "--port", "0", "--bots", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.terminate()
        proc.wait(10)
    assert lines[0].startswith("Bot API stand-in at http://127.0.0.1:")
    assert lines[1].startswith("TELEGRAM_API_URL=http://127.0.0.1:") and lines[1].strip().endswith("/bot{0}/{1}")
    assert all(line.startswith("bot @") and "token" not in line for line in lines[2:])
