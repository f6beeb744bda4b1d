"""The README's first command, on the embedded default: no PostgreSQL, no Redis, no Docker."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e

SERVICE_VARS = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_BROKER_FOLDER", "DJANGO_SETTINGS_MODULE")


def run_demo(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["FACTORY_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "manage.py", "demo", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )


def test_demo_builds_deploys_and_stops_a_greeting_service(tmp_path):
    home = tmp_path / "embedded"
    done = run_demo(home, "a web service that greets people by name", "--exit")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for stage in ("architect", "preparer", "developer", "tester", "deployer", "notify"):
        assert re.search(rf"\[\s*\d+\.\ds\] {stage} started", out), out
    assert re.search(r'GET /health -> 200 \{"status": "ok"', out)
    assert "GET /greet?name=Ada -> 200" in out and '"Hello, Ada!"' in out
    url = re.search(r"^Service running at (http://127\.0\.0\.1:(\d+)/)$", out, re.M)
    assert url, out
    # It really was the embedded default: a SQLite file and the filesystem broker in FACTORY_HOME.
    db = sqlite3.connect(home / "db.sqlite3")
    assert db.execute("select status from projects_pipelinerun").fetchall() == [("succeeded",)]
    # --exit stopped everything: the service's port is closed and no worker is left alive.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(url.group(2))), timeout=1)
    assert db.execute("select status from projects_deployment").fetchall() == [("stopped",)]
    assert {s for (s,) in db.execute("select state from agents_workersession")} <= {"terminated"}
    assert (home / "broker" / "queue").is_dir()


def test_demo_refuses_a_description_it_cannot_build_and_says_why(tmp_path):
    done = run_demo(tmp_path / "embedded", "a bot that tells the weather", "--exit")
    assert done.returncode != 0
    assert "architect FAILED" in done.stdout
    assert "weather" in done.stdout and "LLM" in done.stdout


def test_demo_builds_a_telegram_bot_from_the_pool_and_shows_it_answering(tmp_path):
    home = tmp_path / "embedded"
    env_url = os.environ.pop("TELEGRAM_API_URL", None)
    try:
        done = run_demo(home, "a telegram bot that greets people by name", "--exit")
    finally:
        if env_url is not None:
            os.environ["TELEGRAM_API_URL"] = env_url
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "you: /hello Ada → bot: Hello, Ada!" in out, out
    name = re.search(r"^Bot @(\w+_bot) running$", out, re.M)
    assert name, out
    db = sqlite3.connect(home / "db.sqlite3")
    # The pool's bot served the project and went back to the pool when the demo stopped.
    assert db.execute("select username, status from secrets_meta_bottoken").fetchall() == [(name.group(1), "free")]
    # Its token is in the vault, encrypted: not in the database's plain text.
    assert db.execute("select count(*) from secrets_meta_secretvalue where scope = 'bots'").fetchone() == (1,)
    assert (home / "secrets.key").stat().st_mode & 0o777 == 0o600
    # A second demo in the same home: the pool's bot (its first stand-in gone) serves again.
    again = run_demo(home, "a telegram bot that greets people by name", "--exit")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Bot @{name.group(1)} running" in again.stdout
    assert "you: /hello Ada → bot: Hello, Ada!" in again.stdout


def test_a_demo_stopped_with_sigterm_stops_everything_it_started(tmp_path):
    home = tmp_path / "embedded"
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["FACTORY_HOME"] = str(home)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "a web service that greets people by name"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    api = None
    for line in proc.stdout:
        api = api or re.search(r"API and admin at http://127\.0\.0\.1:(\d+)/", line)
        if "Service running at" in line:
            break
    assert api, "the demo never said where its API is"
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert "Stopping." in rest
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(api.group(1))), timeout=1)
    db = sqlite3.connect(home / "db.sqlite3")
    assert db.execute("select status from projects_deployment").fetchall() == [("stopped",)]
    assert {s for (s,) in db.execute("select state from agents_workersession")} <= {"terminated"}
