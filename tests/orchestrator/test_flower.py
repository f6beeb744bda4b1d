"""`manage.py flower`: Flower behind basic auth, and never open in production."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests
from django.core.management.base import CommandError

from orchestrator.management.commands.flower import flower_argv
from tests.caddy_server import free_port
from tests.conftest import ROOT, child_env


def test_production_without_credentials_is_refused():
    with pytest.raises(CommandError, match="without authentication"):
        flower_argv(auth="", address="127.0.0.1", port=5555, production=True)
    with pytest.raises(CommandError, match="user:password"):
        flower_argv(auth="no-colon", address="127.0.0.1", port=5555, production=True)


def test_the_credentials_never_go_on_the_command_line():
    argv = flower_argv(auth="operator:s3cret-pass", address="127.0.0.1", port=5555, production=True)
    assert not any("s3cret" in part for part in argv)


def test_a_production_flower_without_credentials_does_not_start(tmp_path):
    key = "M0t5bFn0Yh2cJx2b8Vt0nQyq3oUa1n8yZkGq8r2c9aE="  # any Fernet key: production requires one
    env = child_env(PRODUCTION="true", DJANGO_SECRET_KEY="x" * 50, SECRETS_ENCRYPTION_KEY=key, FLOWER_BASIC_AUTH="")
    done = subprocess.run(
        [sys.executable, "manage.py", "flower"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "without authentication" in done.stderr


@pytest.mark.django_db
def test_flower_answers_only_with_its_credentials(tmp_path):
    port = free_port()
    env = child_env(FLOWER_BASIC_AUTH="operator:s3cret-pass", FLOWER_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "flower"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/api/workers"
        deadline = time.monotonic() + 30
        while True:
            try:
                anonymous = requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "flower did not start"
                time.sleep(0.3)
        assert anonymous.status_code == 401
        assert requests.get(url, auth=("operator", "wrong"), timeout=5).status_code == 401
        assert requests.get(url, auth=("operator", "s3cret-pass"), timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
