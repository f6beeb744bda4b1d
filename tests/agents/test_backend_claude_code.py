"""The Claude Code backend against a fake ``claude`` that prints the documented JSON result.

The WorkerExec runs real subprocesses in a real git working copy with a bare remote, as the
process runtime does; the fake CLI writes files, commits and pushes when its scenario says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from agents.backends import get_backend
from agents.backends.base import DevelopTask
from agents.backends.claude_code import ClaudeCodeBackend
from agents.contracts import FailingTest, TestReport
from agents.models import AgentConfig
from config.errors import PermanentError
from projects.specs import Feature, ProjectSpec

FAKE_CLAUDE = Path(__file__).resolve().parents[1] / "fakes" / "claude"
API_KEY = "sk-ant-test-not-a-real-key-123"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Agent",
    "GIT_AUTHOR_EMAIL": "agent@example.invalid",
    "GIT_COMMITTER_NAME": "Agent",
    "GIT_COMMITTER_EMAIL": "agent@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
SPEC = ProjectSpec(
    name="Greeter",
    slug="greeter",
    kind="web_service",
    features=[Feature(name="greet", summary="GET /greet?name=Ada says hello")],
)


@dataclass
class Worker:
    repo: Path
    remote: Path
    scenario: Path

    @property
    def log(self) -> list[dict]:
        path = Path(str(self.scenario) + ".log")
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def play(self, **scenario) -> None:
        self.scenario.write_text(json.dumps(scenario))

    def exec(self, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
        """Runs a command "in the worker": a bare environment, as orchestrator.workers builds it."""
        base = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.repo.parent),
            "LANG": "C.UTF-8",
            "FAKE_CLAUDE_SCENARIO": str(self.scenario),
            **GIT_ENV,
        }
        proc = subprocess.run(argv, cwd=self.repo, env={**env, **base}, capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    def remote_sha(self, branch: str = "run-1") -> str:
        proc = subprocess.run(
            ["git", "rev-parse", f"refs/heads/{branch}"],
            cwd=self.remote,
            capture_output=True,
            text=True,
            env={**os.environ, **GIT_ENV},
        )
        return proc.stdout.strip()


def sh(cwd: Path, *argv: str) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


@pytest.fixture
def worker(tmp_path: Path, settings) -> Worker:
    settings.CLAUDE_BIN = str(FAKE_CLAUDE)
    settings.ANTHROPIC_API_KEY = API_KEY
    remote = tmp_path / "remote.git"
    repo = tmp_path / "work"
    repo.mkdir()
    sh(tmp_path, "git", "init", "--quiet", "--bare", str(remote))
    sh(repo, "git", "init", "--quiet", "--initial-branch=run-1")
    (repo / "TASK.md").write_text("# Task: Greeter\n")
    (repo / "AGENTS.md").write_text("# Working agreement\n")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "--quiet", "-m", "Prepare")
    sh(repo, "git", "remote", "add", "origin", str(remote))
    sh(repo, "git", "push", "--quiet", "origin", "HEAD:refs/heads/run-1")
    w = Worker(repo=repo, remote=remote, scenario=tmp_path / "scenario.json")
    w.play(mode="success")
    return w


def make_task(worker: Worker, **overrides) -> DevelopTask:
    fields = dict(
        run_id=7, iteration=1, branch="run-1", spec=SPEC, repo_dir=str(worker.repo), spec_path=".factory/spec.json"
    )
    fields.update(overrides)
    return DevelopTask(**fields)


def backend(**config) -> ClaudeCodeBackend:
    b = get_backend(AgentConfig(role="developer", backend="claude_code", **config))
    assert isinstance(b, ClaudeCodeBackend)
    return b


def prompt_of(entry: dict) -> str:
    return entry["argv"][entry["argv"].index("-p") + 1]


def test_success_returns_the_agents_result_with_the_pushed_commit_and_usage(worker):
    worker.play(
        mode="success",
        write={"handlers.py": "def greet(name):\n    return f'Hello {name}'\n"},
        commit=True,
        cost=0.0123,
        session_id="sess-1",
        num_turns=4,
        usage={
            "input_tokens": 1200,
            "output_tokens": 340,
            "cache_read_input_tokens": 5000,
            "cache_creation_input_tokens": 800,
        },
    )

    turn = backend(model="claude-sonnet-4-5", options={"max_turns": 12}).develop(make_task(worker), worker.exec)

    assert turn.problem == ""
    assert turn.result is not None and turn.result.status == "complete"
    assert turn.result.commit == worker.remote_sha() and len(turn.result.commit) == 40
    assert (worker.repo / "handlers.py").exists()
    assert turn.agent_session_id == "sess-1"
    u = turn.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (1200, 340, 5000, 800)
    assert u.cost_usd == Decimal("0.012300")
    assert u.model == "claude-sonnet-4-5"
    argv = worker.log[-1]["argv"]
    assert argv[argv.index("--output-format") + 1] == "json"
    assert "--dangerously-skip-permissions" in argv
    assert argv[argv.index("--model") + 1] == "claude-sonnet-4-5"
    assert argv[argv.index("--max-turns") + 1] == "12"
    assert "--resume" not in argv


def test_api_key_reaches_the_cli_by_environment_never_on_its_command_line(worker):
    backend().develop(make_task(worker), worker.exec)

    entry = worker.log[-1]
    assert entry["api_key_set"] is True
    assert entry["is_sandbox"] == "1"
    assert not any(API_KEY in arg for arg in entry["argv"])


def test_missing_api_key_is_refused_before_the_cli_runs(worker, settings):
    settings.ANTHROPIC_API_KEY = ""

    with pytest.raises(PermanentError, match="ANTHROPIC_API_KEY"):
        backend().develop(make_task(worker), worker.exec)
    assert worker.log == []


def test_default_prompt_points_at_the_task_files_asks_for_the_result_line_and_has_no_curl(worker):
    backend().develop(make_task(worker), worker.exec)

    prompt = prompt_of(worker.log[-1])
    assert "TASK.md" in prompt and "AGENTS.md" in prompt
    assert '"status": "complete" | "blocked" | "failed"' in prompt
    assert "curl" not in prompt.lower()


def test_prompt_lists_the_previous_reports_failing_tests(worker):
    report = TestReport(
        passed=3,
        failed=1,
        failing=[FailingTest(name="tests/test_greet.py::test_greet_ada", message="assert 'Hi Ada' == 'Hello Ada'")],
    )
    backend().develop(make_task(worker, iteration=2, previous_report=report), worker.exec)

    prompt = prompt_of(worker.log[-1])
    assert "test_greet_ada" in prompt and "'Hello Ada'" in prompt
    assert "1 failed" in prompt


def test_prompt_template_is_used_and_keeps_the_report_contract(worker):
    backend(prompt_template="Build {spec_name} on {branch}. Braces {like: this} stay.").develop(
        make_task(worker), worker.exec
    )

    prompt = prompt_of(worker.log[-1])
    assert prompt.startswith("Build Greeter on run-1. Braces {like: this} stay.")
    assert '"status": "complete"' in prompt  # appended: the factory depends on it


def test_a_previous_agent_session_is_resumed_with_a_continue_prompt(worker):
    worker.play(mode="success")

    turn = backend().develop(make_task(worker, resume=True, agent_session_id="sess-42"), worker.exec)

    argv = worker.log[-1]["argv"]
    assert argv[argv.index("--resume") + 1] == "sess-42"
    assert prompt_of(worker.log[-1]).lower().startswith("continue")
    assert turn.agent_session_id == "sess-42"


def test_the_automatic_resume_continues_the_session_of_the_turn_before(worker):
    b = backend()
    worker.play(mode="no_result", session_id="sess-first")
    first = b.develop(make_task(worker), worker.exec)
    assert first.result is None and first.agent_session_id == "sess-first"

    worker.play(mode="success")
    second = b.develop(make_task(worker, resume=True), worker.exec)

    argv = worker.log[-1]["argv"]
    assert argv[argv.index("--resume") + 1] == "sess-first"
    assert second.result is not None


def test_max_turns_gives_no_result_and_says_so(worker):
    worker.play(
        mode="error_max_turns",
        num_turns=12,
        cost=0.5,
        usage={"input_tokens": 10, "output_tokens": 20},
        session_id="sess-9",
    )

    turn = backend(options={"max_turns": 12}).develop(make_task(worker), worker.exec)

    assert turn.result is None
    assert "max turns" in turn.problem and "12 turns" in turn.problem
    assert turn.usage.cost_usd == Decimal("0.5") and turn.usage.output_tokens == 20  # spent all the same
    assert turn.agent_session_id == "sess-9"  # so the resume can continue it


def test_an_error_during_execution_gives_no_result(worker):
    worker.play(mode="error_during_execution", num_turns=2)

    turn = backend().develop(make_task(worker), worker.exec)

    assert turn.result is None
    assert "failed during execution after 2 turns" in turn.problem


def test_an_api_error_result_gives_no_result_with_its_message(worker):
    worker.play(mode="is_error")

    turn = backend().develop(make_task(worker), worker.exec)

    assert turn.result is None
    assert "API Error" in turn.problem


def test_garbage_output_gives_no_result(worker):
    worker.play(mode="garbage")

    turn = backend().develop(make_task(worker), worker.exec)

    assert turn.result is None
    assert "not a JSON result" in turn.problem and "exit code 1" in turn.problem


def test_a_final_message_without_a_result_line_gives_no_result(worker):
    worker.play(mode="no_result")

    turn = backend().develop(make_task(worker), worker.exec)

    assert turn.result is None
    assert "no AgentResult" in turn.problem


def test_architect_is_refused_with_a_clear_message():
    with pytest.raises(PermanentError, match="openai_compatible"):
        backend().architect("a greeting service")
