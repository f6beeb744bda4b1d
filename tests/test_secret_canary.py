"""The canary: secret values reach the release's environment and nowhere else.

A bot project whose pool token is a random canary, plus a user secret `CANARY=<random>` set over
the API, goes through a whole run with a real Celery worker: once with the scripted agent (its
workers in Docker containers where an engine answers), once with the Claude Code backend against
its fake `claude`. Then neither value may appear in the logs, a dump of every table (the vault's
ciphertext aside), any API response, the messages sent to the person, the agent's prompts and
transcripts, any file the factory wrote, the generated repository's git history, `ps` output
taken during the run, or the worker containers' `docker inspect`; the release's environment, and
only it, holds both.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import threading
from pathlib import Path

import pytest
from django.apps import apps

from agents import services as agent_services
from agents.models import WorkerSession
from agents.scripted import bot_features
from orchestrator import bots
from orchestrator.git import bare_repo_path
from orchestrator.telegram.standin import StandIn, make_user
from projects.models import Deployment, Project, TelegramAccount
from secrets_meta.models import SecretValue
from tests.conftest import client_for, wait_for_run

pytestmark = pytest.mark.e2e

FAKE_CLAUDE = Path(__file__).resolve().parent / "fakes" / "claude"
PERSON_TG = 5550001


def _canary_token() -> str:
    alphabet = string.ascii_letters + string.digits
    return f"{secrets.randbelow(9 * 10**9) + 10**9}:" + "".join(secrets.choice(alphabet) for _ in range(35))


class PsSampler(threading.Thread):
    """`ps` every few tenths of a second while the run goes on: every command line seen."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            out = subprocess.run(["ps", "-eo", "pid,args", "ww"], capture_output=True, text=True).stdout
            self.seen.append(out)
            self.halt.wait(0.3)

    def stop(self) -> str:
        self.halt.set()
        self.join(5)
        return "\n".join(self.seen)


@pytest.fixture
def botapi(settings):
    server = StandIn().start()
    server.factory = server.add_bot("factory_canary_bot")
    settings.TELEGRAM_API_URL = server.api_url
    settings.TELEGRAM_BOT_TOKEN = server.factory
    settings.BOTS_API_URL = server.base_url
    yield server
    server.stop()


def _worker_env(botapi: StandIn, **extra: str) -> dict[str, str]:
    return {
        "TELEGRAM_API_URL": botapi.api_url,
        "TELEGRAM_BOT_TOKEN": botapi.factory,
        "BOTS_API_URL": botapi.base_url,
        **extra,
    }


def _table_dump() -> str:
    """Every row of every table, as text; the vault's ciphertext is the one thing left out."""
    lines = []
    for model in apps.get_models():
        if model is SecretValue:
            continue
        for row in model.objects.values_list():
            lines.append(f"{model._meta.label}: {row!r}")
    return "\n".join(lines)


def _files_under(root: Path) -> str:
    text = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                text.append(path.read_bytes().decode("utf-8", "replace"))
            except OSError:
                continue
    return "\n".join(text)


def _git_history(slug: str) -> str:
    repo = bare_repo_path(slug)
    return subprocess.run(
        ["git", "log", "-p", "--all", "--full-history"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def _api_bodies(client, project_id: int, run_id: int) -> str:
    bodies = []
    for path in (
        "/api/projects/",
        f"/api/projects/{project_id}/",
        "/api/runs/",
        f"/api/runs/{run_id}/",
        f"/api/projects/{project_id}/secrets/",
    ):
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        bodies.append(response.content.decode())
    stream = client.get(f"/api/runs/{run_id}/events/")
    bodies.append(b"".join(stream.streaming_content).decode() if stream.streaming else stream.content.decode())
    return "\n".join(bodies)


def _docker_inspects(engine, project: Project) -> str:
    if engine is None:
        return ""
    found = []
    for session in WorkerSession.objects.filter(project=project).exclude(container_id=""):
        try:
            found.append(json.dumps(engine.api.inspect_container(session.container_id)))
        except Exception as exc:  # noqa: BLE001 - a container already removed has nothing to leak
            found.append(f"gone: {type(exc).__name__}")
    return "\n".join(found)


def _run_with_canaries(celery_procs, botapi, user, factory_home, capfd, engine=None, extra_files=(), **worker_env):
    token, value = _canary_token(), "canary-" + secrets.token_urlsafe(24)
    botapi.add_bot("canary_pool_bot", token=token)
    bots.pool_add(token)
    TelegramAccount.objects.create(user=user, telegram_user_id=PERSON_TG, chat_id=PERSON_TG, username="ada")
    sampler = PsSampler()
    sampler.start()
    celery_procs.worker(**_worker_env(botapi, **worker_env))
    client = client_for(user)

    created = client.post("/api/projects/", {"description": "a telegram bot that greets people by name"}, format="json")
    assert created.status_code == 201, created.content
    project_id, run_id = created.json()["id"], created.json()["run_id"]
    put = client.put(f"/api/projects/{project_id}/secrets/CANARY/", {"value": value}, format="json")
    assert put.status_code == 200, put.content
    run = wait_for_run(run_id, timeout=240, procs=celery_procs)
    assert run.status == "succeeded", run.error_message + celery_procs.logs()

    # The release, and only it, holds both values.
    live = Deployment.objects.get(project_id=project_id, status="live")
    with open(f"/proc/{live.pid}/environ", "rb") as fh:
        environ = fh.read().split(b"\0")
    assert f"TELEGRAM_BOT_TOKEN={token}".encode() in environ and f"CANARY={value}".encode() in environ
    stranger = make_user(990002, first_name="Grace")
    botapi.say(token, "/hello Ada", user=stranger)
    assert "Hello, Ada!" in botapi.wait_for_reply(token, stranger["id"], "Hello, Ada!", timeout=15)["text"]

    ps_output = sampler.stop()
    project = Project.objects.get(id=project_id)
    places = {
        "worker logs": celery_procs.logs(tail=None),
        "this process's output": "".join(capfd.readouterr()),
        "database": _table_dump(),
        "API responses": _api_bodies(client, project_id, run_id) + put.content.decode() + created.content.decode(),
        "messages to the person": "\n".join(m.get("text", "") for m in botapi.sent(botapi.factory)),
        "files the factory wrote (prompts, transcripts, workspaces, logs)": _files_under(factory_home),
        "the agent's prompts (the fake claude's log of its argv)": "".join(p.read_text() for p in extra_files),
        "git history": _git_history(project.slug),
        "ps output": ps_output,
        "docker inspect of the workers": _docker_inspects(engine, project),
    }
    counts = {place: text.count(token) + text.count(value) for place, text in places.items()}
    assert counts == dict.fromkeys(places, 0), counts
    # It was looked for where it would be: the person was told, files and logs exist.
    assert "is live" in places["messages to the person"] and places["worker logs"] and places["ps output"]
    ciphertexts = "".join(SecretValue.objects.values_list("ciphertext", flat=True))
    assert token not in ciphertexts and value not in ciphertexts and ciphertexts
    return run


def test_no_secret_reaches_anything_but_the_release_with_the_scripted_agent(
    celery_procs, botapi, user, factory_home, capfd, request
):
    engine = None
    if os.environ.get("FACTORY_CANARY_DOCKER", "1") == "1":
        try:
            engine = request.getfixturevalue("engine")
            image = request.getfixturevalue("worker_image")
        except pytest.skip.Exception:
            engine = None
    extra = {}
    if engine is not None:
        for role in ("developer", "tester"):
            agent_services.agent_config_set(role=role, runtime="docker")
        extra["WORKER_IMAGE"] = image
    run = _run_with_canaries(celery_procs, botapi, user, factory_home, capfd, engine=engine, **extra)
    if engine is not None:
        assert WorkerSession.objects.filter(run=run, runtime="docker").exists()


def test_no_secret_reaches_anything_but_the_release_with_claude_code(
    celery_procs, botapi, user, factory_home, capfd, tmp_path, live_server
):
    # The fake `claude` writes the bot's handlers and tests, commits and pushes, like the real CLI.
    spec_features = ["greet"]
    scenario = tmp_path / "scenario.json"
    scenario.write_text(
        json.dumps(
            {
                "write": {
                    "handlers.py": bot_features.render_bot_handlers(spec_features, faulty=False),
                    "tests/test_features.py": bot_features.render_bot_tests(spec_features),
                },
                "commit": True,
            }
        )
    )
    wrapper = tmp_path / "claude"
    wrapper.write_text(f'#!/bin/sh\nFAKE_CLAUDE_SCENARIO={scenario} exec {FAKE_CLAUDE} "$@"\n')
    wrapper.chmod(0o755)
    agent_services.agent_config_set(role="developer", backend="claude_code", model="claude-sonnet-4-5")
    prompts = Path(str(scenario) + ".log")
    _run_with_canaries(
        celery_procs,
        botapi,
        user,
        factory_home,
        capfd,
        extra_files=[prompts],
        CLAUDE_BIN=str(wrapper),
        ANTHROPIC_API_KEY="sk-test-not-a-real-key",
        FACTORY_API_URL=live_server.url,
    )
    # The agent was really asked (its prompt is in the log searched above).
    assert prompts.read_text().count('"-p"') >= 1
