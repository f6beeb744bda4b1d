"""The scripted Developer builds Telegram bots: real copier scaffold, real git, real pytest, and
the generated bot run as a process against the loopback Bot API (tests/fakes/telegram_server.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import copier
import pytest

from agents.contracts import AgentResult
from agents.scripted.bot_features import BOT_FEATURES
from agents.scripted.catalogue import CATALOGUE, plan
from tests.fakes.telegram_server import FakeTelegram

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = REPO_ROOT / "templates"
GIT_IDENTITY = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
ALL_BOT_FEATURES = " and ".join(feature.bot_example for feature in CATALOGUE)
# A test of each feature whose name starts like this (see agents/scripted/bot_features.py).
FEATURE_TEST_PREFIX = {
    "greet": "test_hello",
    "echo": "test_echo",
    "time": "test_time",
    "counter": "test_count",
    "notes": "test_note",
    "calculator": "test_add",
    "dice": "test_roll",
}


@dataclass
class Project:
    work: Path
    remote: Path
    tmp: Path


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def scaffold(tmp_path: Path, kind: str) -> Project:
    work = tmp_path / "work"
    copier.run_copy(
        str(TEMPLATES / kind),
        str(work),
        defaults=True,
        unsafe=False,
        quiet=True,
        data={"project_name": "Test Bot", "project_slug": "test-bot", "summary": "A bot under test."},
    )
    git(work, "init", "--quiet", "--initial-branch=main")
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "Scaffold")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True)
    git(work, "remote", "add", "origin", str(remote))
    return Project(work=work, remote=remote, tmp=tmp_path)


@pytest.fixture
def bot_project(tmp_path: Path) -> Project:
    """A freshly scaffolded telegram_bot with one commit and an empty bare remote."""
    return scaffold(tmp_path, "telegram_bot")


def write_spec(project: Project, description: str | None = None, spec: dict | None = None) -> Path:
    path = project.tmp / "spec.json"
    path.write_text(plan(description).model_dump_json() if description is not None else json.dumps(spec))
    return path


def run_agent(project: Project, spec: Path, *, iteration: int = 1, fail_times: int = 0) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "agents.scripted.agent", "develop", "--spec", str(spec)]
        + ["--iteration", str(iteration), "--fail-times", str(fail_times), "--branch", "run-1", "--remote", "origin"],
        cwd=project.work,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    AgentResult.model_validate_json(lines[0])
    return result.returncode, json.loads(lines[0])


def run_project_tests(project: Project) -> subprocess.CompletedProcess[str]:
    """The project's own suite, as the Tester runs it: no Django, no factory on the path."""
    env = {key: value for key, value in os.environ.items() if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rf", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:django"],
        cwd=project.work,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_scripted_developer_implements_every_catalogue_feature_as_a_bot():
    assert set(BOT_FEATURES) == {feature.name for feature in CATALOGUE}


def test_every_bot_feature_passes_its_own_tests_and_reaches_the_remote(bot_project):
    code, result = run_agent(bot_project, write_spec(bot_project, ALL_BOT_FEATURES))

    assert (code, result["status"]) == (0, "complete")
    assert git(bot_project.remote, "rev-parse", "refs/heads/run-1") == result["commit"]
    handlers = (bot_project.work / "handlers.py").read_text()
    assert all(f"register_{name}(bot)" in handlers for name in BOT_FEATURES)
    tests = run_project_tests(bot_project)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout and "failed" not in tests.stdout


def test_faulty_iteration_fails_each_features_tests_then_the_next_one_repairs(bot_project):
    spec = write_spec(bot_project, ALL_BOT_FEATURES)

    code, result = run_agent(bot_project, spec, iteration=1, fail_times=1)
    assert code == 0 and "Deliberately faulty" in result["summary"]
    tests = run_project_tests(bot_project)
    assert tests.returncode == 1, tests.stdout
    failed = [line for line in tests.stdout.splitlines() if line.startswith("FAILED")]
    for feature, prefix in FEATURE_TEST_PREFIX.items():
        assert any(f"::{prefix}" in line for line in failed), f"{feature} did not fail"
    assert not any("test_health" in line or "test_runner" in line for line in failed)

    code, repaired = run_agent(bot_project, spec, iteration=2, fail_times=1)
    assert code == 0 and "faulty" not in repaired["summary"]
    assert git(bot_project.remote, "rev-parse", "refs/heads/run-1") == repaired["commit"] != result["commit"]
    assert run_project_tests(bot_project).returncode == 0


def test_rerun_with_the_same_inputs_makes_one_commit(bot_project):
    spec = write_spec(bot_project, "a telegram bot that rolls dice")
    _, first = run_agent(bot_project, spec)
    _, second = run_agent(bot_project, spec)
    assert int(git(bot_project.work, "rev-list", "--count", "HEAD")) == 2
    assert first["commit"] == second["commit"] and second["summary"].startswith("Already implemented")


def test_handlers_implement_exactly_the_spec_features(bot_project):
    run_agent(bot_project, write_spec(bot_project, "a bot that greets people by name"))
    handlers = (bot_project.work / "handlers.py").read_text()
    assert "register_greet(bot)" in handlers
    assert "/roll" not in handlers and "register_echo" not in handlers


def test_a_bot_spec_in_a_web_service_scaffold_fails_and_changes_nothing(tmp_path):
    project = scaffold(tmp_path, "web_service")
    code, result = run_agent(project, write_spec(project, "a telegram bot that rolls dice"))
    assert (code, result["status"]) == (1, "failed")
    assert "scaffolded as a web_service, but the spec is a telegram_bot" in result["summary"]
    assert git(project.remote, "branch", "--list") == ""


def test_a_web_spec_in_a_bot_scaffold_fails(bot_project):
    code, result = run_agent(bot_project, write_spec(bot_project, "a web service that rolls dice"))
    assert code == 1 and "scaffolded as a telegram_bot, but the spec is a web_service" in result["summary"]


def test_a_web_only_feature_name_in_a_bot_spec_fails(bot_project):
    spec = {"name": "W", "slug": "weather-bot", "kind": "telegram_bot", "features": [{"name": "weather"}]}
    code, result = run_agent(bot_project, write_spec(bot_project, spec=spec))
    assert code == 1 and "'weather'" in result["summary"]


def test_unknown_kind_fails(bot_project):
    spec = {"name": "A", "slug": "an-app", "kind": "mobile_app", "features": [{"name": "greet"}]}
    code, result = run_agent(bot_project, write_spec(bot_project, spec=spec))
    assert code == 1 and "'mobile_app'" in result["summary"]


# --- the generated bot as the Deployer runs it ------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError):
        return None


def test_generated_bot_runs_from_factory_json_and_passes_its_conversation_checks(bot_project):
    description = ALL_BOT_FEATURES
    run_agent(bot_project, write_spec(bot_project, description))
    start = json.loads((bot_project.work / "factory.json").read_text())
    assert start == {"start": ["python", "app.py"], "health": "/health", "kind": "telegram_bot"}
    telegram = FakeTelegram().start()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")},
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_API_URL": telegram.api_url,  # telebot's format string form
        "PORT": str(port),
        "RELEASE": "r7",
    }
    process = subprocess.Popen(
        [sys.executable, *start["start"][1:]],
        cwd=bot_project.work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not (body := health(port)) or not body["polling"]:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        assert (body["status"], body["release"], body["bot"]) == ("ok", "r7", "factory_test_bot")
        user = {"id": 5150, "is_bot": False, "first_name": "Grace"}
        for check in plan(description).conversation:  # in one chat, in order, as the Deployer says them
            before = len(telegram.texts_to(user["id"]))
            telegram.say(user, check.send)
            deadline = time.monotonic() + 10
            while len(telegram.texts_to(user["id"])) <= before:
                assert time.monotonic() < deadline, f"no reply to {check.send!r}"
                time.sleep(0.02)
            reply = telegram.texts_to(user["id"])[before]
            assert check.expect_contains in reply, (check, reply)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        out, err = process.communicate()
        telegram.stop()
    assert telegram.token not in out + err
