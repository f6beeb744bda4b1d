"""Shared fixtures: people and API clients, a private factory home, real Celery processes."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

import docker

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def rendered_logs():
    """The real logging configuration (console lines, DEBUG: urllib3's request lines, which carry
    a bot's token in their URL), writing to a buffer; the previous one is put back. What a test
    reads from it is what an operator's log would show."""
    import structlog

    from config.logging import configure_logging

    saved_config, root = structlog.get_config(), logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging(json=False, level="DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        structlog.configure(**saved_config)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def pytest_collection_modifyitems(config, items):
    """FACTORY_SKIP_CHAOS=1 skips the long crash tests (marked ``chaos``) on a local run; CI
    (CI=true) runs them always."""
    if os.environ.get("FACTORY_SKIP_CHAOS") != "1" or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason="FACTORY_SKIP_CHAOS=1 (CI runs them)")
    for item in items:
        if "chaos" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def factory_home(settings, tmp_path) -> Path:
    """Every test gets its own repositories, workspaces and releases."""
    home = tmp_path / "home"
    home.mkdir()
    settings.FACTORY_HOME = home
    return home


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="ada", password="pw-ada-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="pw-bob-123")


def client_for(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(user) -> APIClient:
    return client_for(user)


LLM_API_KEY = "llm-test-key-not-real-456"


@pytest.fixture
def llm(settings):
    """A loopback chat-completions server the openai_compatible backend talks to."""
    from tests.fakes.llm_server import FakeLLMServer

    server = FakeLLMServer().start()
    settings.LLM_BASE_URL = server.base_url
    settings.LLM_API_KEY = LLM_API_KEY
    settings.LLM_MODEL = "fake-model"
    yield server
    server.stop()


@pytest.fixture
def new_run(transactional_db, user):
    """Make runs from descriptions (for stages driven in this process); tear their projects down."""
    from orchestrator.maintenance import project_teardown
    from projects import services

    created = []

    def make(description="a web service that greets people by name"):
        project, run = services.project_create(owner=user, description=description)
        created.append(project.id)
        return run

    yield make
    for project_id in created:
        project_teardown(project_id=project_id)


def database_url() -> str:
    """The URL of the database this test runs against (the test database), for child processes."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def child_env(**overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "FACTORY_HOME": str(settings.FACTORY_HOME),
        "CELERY_BROKER_FOLDER": str(settings.BROKER_FOLDER),
        "STAGE_HEARTBEAT_SECONDS": "0.5",
        "STAGE_STALE_SECONDS": "4",
        "STAGE_PICKUP_SECONDS": "20",
        "RECONCILE_INTERVAL_SECONDS": "1",
        "DEPLOY_HEALTH_TIMEOUT": "20",
        "PYTHONUNBUFFERED": "1",
    }
    if settings.CELERY_BROKER_URL:
        env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    env.update(overrides)
    return env


class CeleryProcesses:
    """Real ``celery worker`` / ``celery beat`` processes against the test database."""

    def __init__(self, home: Path):
        self.home = home
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, name: str, argv: list[str], ready: str | None, env: dict[str, str]) -> subprocess.Popen:
        log = self.home / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", *argv, "--loglevel=INFO"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        if ready:
            deadline = time.monotonic() + 60
            while ready not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"celery {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.1)
        return proc

    def worker(self, concurrency: int = 2, *, task_events: bool = False, **env: str) -> subprocess.Popen:
        """``task_events``: send task events (``-E``), as Flower needs; the gossip and heartbeat
        these test nodes go without would otherwise carry them."""
        return self._spawn(
            "worker",
            [
                "worker",
                *(["-E"] if task_events else []),
                "-Q",
                "pipeline,agents,maintenance,notify",
                f"--concurrency={concurrency}",
                "-n",
                f"test-{len(self.procs)}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            "ready.",
            child_env(**env),
        )

    def beat(self, **env: str) -> subprocess.Popen:
        return self._spawn("beat", ["beat", f"--schedule={self.home / 'beat-schedule'}"], None, child_env(**env))

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL the whole process (pool children included), as a crash would."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.kill(proc)

    def logs(self, tail: int | None = 4000) -> str:
        texts = [(p.log.name, p.log.read_text(errors="replace")) for p in self.procs]
        return "\n".join(f"--- {name}\n{text[-tail:] if tail else text}" for name, text in texts)


@pytest.fixture
def celery_procs(transactional_db, factory_home):
    from config.celery import app
    from orchestrator.maintenance import project_teardown
    from projects.models import Project

    app.control.purge()  # messages left by other tests belong to other databases
    procs = CeleryProcesses(factory_home)
    yield procs
    procs.stop_all()
    for project_id in Project.objects.values_list("id", flat=True):
        project_teardown(project_id=project_id)


def wait_for_run(run_id: int, timeout: float = 180, procs: CeleryProcesses | None = None):
    """Wait until the run has finished and its person was told (the final message exists)."""
    from projects.models import PipelineRun, StageRun

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = PipelineRun.objects.get(id=run_id)
        notify_done = StageRun.objects.filter(run_id=run_id, stage="notify", status="succeeded").exists()
        if run.is_finished and run.result_message and notify_done:
            return run
        time.sleep(0.25)
    logs = procs.logs() if procs else ""
    raise AssertionError(f"run {run_id} did not finish in {timeout}s: {run.status} at {run.current_stage}\n{logs}")


# --- Docker: the real engine and the locally built test image ------------------------
TEST_IMAGE = "factory-worker:test"


@pytest.fixture(scope="session")
def engine():
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, yet no Docker engine answers: {exc}")
        pytest.skip(f"no Docker engine answers ({exc}); start one with scripts/dockerd")
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker_image(engine) -> str:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "worker-image")],
        env={**os.environ, "WORKER_IMAGE": TEST_IMAGE},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/worker-image failed:\n{proc.stdout}\n{proc.stderr}")
    return TEST_IMAGE


@pytest.fixture
def telegram(settings):
    """A loopback Telegram Bot API (tests/fakes/telegram_server.py) that the settings point at.

    A Celery worker that must talk to it gets ``celery_procs.worker(**telegram.worker_env())``.
    """
    from tests.fakes.telegram_server import FakeTelegram

    server = FakeTelegram().start()
    settings.TELEGRAM_API_URL = server.api_url
    settings.TELEGRAM_BOT_TOKEN = server.token
    settings.TELEGRAM_WEBHOOK_SECRET = "webhook-secret-for-tests"
    yield server
    server.stop()
