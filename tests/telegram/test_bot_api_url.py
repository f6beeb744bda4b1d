"""TELEGRAM_API_URL as people give it: a base URL (a local Bot API server) or telebot's format."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import bot_api_format
from orchestrator.telegram import transport
from orchestrator.telegram.standin import StandIn

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "given, used",
    [
        ("https://api.telegram.org", "https://api.telegram.org/bot{0}/{1}"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081/bot{0}/{1}"),
        ("https://api.telegram.org/bot{0}/{1}", "https://api.telegram.org/bot{0}/{1}"),
    ],
)
def test_a_base_url_gets_the_bot_path_and_a_format_is_kept(given, used):
    assert bot_api_format(given) == used


@pytest.mark.parametrize("given", ["api.telegram.org", "https://x/bot{0}", "ftp://x"])
def test_an_unusable_url_is_refused_naming_the_variable(given):
    with pytest.raises(ImproperlyConfigured, match="TELEGRAM_API_URL"):
        bot_api_format(given)


def test_the_factory_reaches_a_bot_api_given_by_its_base_url(settings):
    standin = StandIn().start()
    try:
        token = standin.add_bot("base_url_bot")
        settings.TELEGRAM_API_URL = bot_api_format(standin.base_url)
        assert transport.bot_get_me(token).username == "base_url_bot"
    finally:
        standin.stop()


def test_the_setting_is_read_from_the_environment_in_either_form(tmp_path):
    env = {**os.environ, "FACTORY_HOME": str(tmp_path), "TELEGRAM_API_URL": "http://127.0.0.1:8081"}
    code = "from django.conf import settings; print(settings.TELEGRAM_API_URL, settings.BOTS_API_URL)"
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.stdout.split() == ["http://127.0.0.1:8081/bot{0}/{1}"] * 2, out.stderr
