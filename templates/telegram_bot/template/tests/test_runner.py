"""How app.py runs the handlers: every update handled once, errors survived, the API found."""

from __future__ import annotations

import pytest
from conftest import Chat

import app as bot_app


def _ping_and_boom(bot):
    @bot.message_handler(commands=["ping"])
    def ping(message):
        bot.send_message(message.chat.id, "pong")

    @bot.message_handler(commands=["boom"])
    def boom(message):
        raise RuntimeError("handler bug")


def test_a_handler_answers_through_the_bot_api(start_bot, bot_api):
    start_bot(first=_ping_and_boom)
    chat = Chat(bot_api)
    assert chat.send("/ping") == "pong"
    assert chat.send("/ping") == "pong"
    assert bot_api.texts_to(chat.id) == ["pong", "pong"]  # each update handled once


def test_a_failing_handler_costs_its_update_and_the_bot_keeps_answering(start_bot, bot_api, capfd):
    start_bot(first=_ping_and_boom)
    chat = Chat(bot_api)
    bot_api.push(chat.id, "/boom")
    assert chat.send("/ping") == "pong"
    assert "pong" in bot_api.texts_to(chat.id)
    assert "handler bug" in capfd.readouterr().err


def test_polling_survives_bot_api_errors(start_bot, bot_api):
    bot_api.fail("getUpdates", 502, "Bad Gateway", times=3)
    start_bot(first=_ping_and_boom)
    assert Chat(bot_api).send("/ping") == "pong"
    assert bot_api.calls.count("getUpdates") >= 4


def test_a_webhook_in_the_way_is_removed(start_bot, bot_api):
    bot_api.fail("getUpdates", 409, "Conflict: can't use getUpdates method while webhook is active")
    start_bot(first=_ping_and_boom)
    assert Chat(bot_api).send("/ping") == "pong"
    assert "deleteWebhook" in bot_api.calls


def test_the_api_url_is_given_as_a_format_string_too(start_bot, bot_api):
    start_bot(first=_ping_and_boom, api_url=bot_api.base_url + "/bot{0}/{1}")
    assert Chat(bot_api).send("/ping") == "pong"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "https://api.telegram.org/bot{0}/{1}"),
        ("", "https://api.telegram.org/bot{0}/{1}"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081/bot{0}/{1}"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081/bot{0}/{1}"),
        ("http://127.0.0.1:8081/bot{0}/{1}", "http://127.0.0.1:8081/bot{0}/{1}"),
    ],
)
def test_api_url_format(value, expected):
    assert bot_app.api_url_format(value) == expected
