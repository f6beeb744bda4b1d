"""The scripted Developer end to end: real copier scaffold, real git, real pytest, real process."""

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
from agents.scripted import agent
from agents.scripted.catalogue import CATALOGUE, plan

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "templates" / "web_service"
GIT_IDENTITY = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
ALL_FEATURES = " and ".join(feature.example for feature in CATALOGUE)
# A test of each feature whose name starts like this (see agents/scripted/agent.py).
FEATURE_TEST_PREFIX = {
    "greet": "test_greet",
    "echo": "test_echo",
    "time": "test_time",
    "counter": "test_counter",
    "notes": "test_notes",
    "calculator": "test_add",
    "dice": "test_roll",
}


@dataclass
class Project:
    work: Path  # the working copy the agent runs in
    remote: Path  # a bare repository standing in for GitHub
    tmp: Path


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A freshly scaffolded web service with one commit and an empty bare remote."""
    work = tmp_path / "work"
    copier.run_copy(
        str(TEMPLATE),
        str(work),
        defaults=True,
        unsafe=False,
        quiet=True,
        data={"project_name": "Test Service", "project_slug": "test-service", "summary": "A service under test."},
    )
    git(work, "init", "--quiet", "--initial-branch=main")
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "Scaffold")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True)
    git(work, "remote", "add", "origin", str(remote))
    return Project(work=work, remote=remote, tmp=tmp_path)


def write_spec(project: Project, description: str | None = None, spec: dict | None = None) -> Path:
    path = project.tmp / "spec.json"
    text = plan(description).model_dump_json() if description is not None else json.dumps(spec)
    path.write_text(text, encoding="utf-8")
    return path


def run_agent(
    project: Project, spec: Path, *, iteration: int = 1, fail_times: int = 0, branch: str = "run-1"
) -> tuple[int, dict]:
    """Run the agent as the pipeline does; return its exit code and its one line of JSON."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agents.scripted.agent",
            "develop",
            "--spec",
            str(spec),
            "--iteration",
            str(iteration),
            "--fail-times",
            str(fail_times),
            "--branch",
            branch,
            "--remote",
            "origin",
        ],
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
    """The project's own test suite, as the tester runs it (no Django settings around)."""
    env = {key: value for key, value in os.environ.items() if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rf", "-p", "no:cacheprovider"],
        cwd=project.work,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def commit_count(project: Project) -> int:
    return int(git(project.work, "rev-list", "--count", "HEAD"))


def test_scripted_developer_implements_every_catalogue_feature():
    assert set(agent.FEATURES) == {feature.name for feature in CATALOGUE}


def test_correct_iteration_passes_the_projects_own_tests_and_reaches_the_remote(project):
    code, result = run_agent(project, write_spec(project, ALL_FEATURES))

    assert code == 0
    assert result["status"] == "complete"
    assert result["commit"] == git(project.work, "rev-parse", "HEAD")
    assert git(project.remote, "rev-parse", "refs/heads/run-1") == result["commit"]
    assert git(project.work, "log", "-1", "--format=%s") == (
        "Implement greet, echo, time, counter, notes, calculator, dice (iteration 1)"
    )
    tests = run_project_tests(project)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout and "failed" not in tests.stdout


def test_faulty_iteration_fails_the_projects_own_tests_then_the_next_one_repairs(project):
    spec = write_spec(project, ALL_FEATURES)

    code, result = run_agent(project, spec, iteration=1, fail_times=1)
    assert code == 0 and result["status"] == "complete"
    assert "Deliberately faulty" in result["summary"]
    tests = run_project_tests(project)
    assert tests.returncode == 1, tests.stdout
    failed = [line for line in tests.stdout.splitlines() if line.startswith("FAILED")]
    for feature, prefix in FEATURE_TEST_PREFIX.items():
        assert any(f"::{prefix}" in line for line in failed), f"{feature} did not fail"
    assert not any("test_health" in line for line in failed)

    code, repaired = run_agent(project, spec, iteration=2, fail_times=1)
    assert code == 0 and "faulty" not in repaired["summary"]
    assert repaired["commit"] != result["commit"]
    assert git(project.remote, "rev-parse", "refs/heads/run-1") == repaired["commit"]
    assert run_project_tests(project).returncode == 0


def test_rerun_with_the_same_inputs_makes_one_commit(project):
    spec = write_spec(project, "a web service that greets people by name")
    before = commit_count(project)

    _, first = run_agent(project, spec)
    _, second = run_agent(project, spec)

    assert commit_count(project) == before + 1
    assert first["commit"] == second["commit"]
    assert second["summary"].startswith("Already implemented")
    assert git(project.remote, "rev-parse", "refs/heads/run-1") == first["commit"]


def test_handlers_implement_exactly_the_spec_features(project):
    run_agent(project, write_spec(project, "a web service that greets people by name"))

    handlers = (project.work / "handlers.py").read_text()
    assert '("GET", "/greet"): greet' in handlers
    assert "/echo" not in handlers and "/roll" not in handlers


def test_unknown_feature_fails_with_exit_1_and_changes_nothing(project):
    spec = write_spec(
        project, spec={"name": "Weather", "slug": "weather", "kind": "web_service", "features": [{"name": "weather"}]}
    )
    before = (project.work / "handlers.py").read_text()

    code, result = run_agent(project, spec)

    assert code == 1
    assert result["status"] == "failed"
    assert "'weather'" in result["summary"]
    assert (project.work / "handlers.py").read_text() == before
    assert commit_count(project) == 1
    assert git(project.remote, "branch", "--list") == ""


def test_telegram_bot_spec_fails(project):
    spec = write_spec(
        project, spec={"name": "Bot", "slug": "bot", "kind": "telegram_bot", "features": [{"name": "greet"}]}
    )
    code, result = run_agent(project, spec)
    assert code == 1
    assert "web_service" in result["summary"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_generated_app_serves_as_a_process_and_exits_0_on_sigterm(project):
    run_agent(project, write_spec(project, "a web service that greets people by name"))
    port = free_port()
    start = json.loads((project.work / "factory.json").read_text())
    assert start == {"start": ["python", "app.py"], "health": "/health"}
    env = {**os.environ, "PORT": str(port), "RELEASE": "r42"}
    process = subprocess.Popen(
        [sys.executable, *start["start"][1:]],
        cwd=project.work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                health = get_json(base + start["health"])
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the app did not start"
                time.sleep(0.05)
        assert health == (200, {"status": "ok", "release": "r42"})
        assert get_json(base + "/greet?name=Ada") == (200, {"message": "Hello, Ada!"})
        assert get_json(base + "/nowhere") == (404, {"error": "not found"})

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_generated_app_without_port_exits_2(project):
    env = {key: value for key, value in os.environ.items() if key != "PORT"}
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=project.work, env=env, capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 2
    assert "PORT" in result.stderr
