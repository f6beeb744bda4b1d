"""The OpenAI-compatible backend against a loopback chat-completions server.

The model's tool calls are scripted; they execute for real, as subprocesses in a git working
copy with a bare remote, through the same WorkerExec shape the pipeline passes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from agents.backends import get_backend
from agents.backends.base import DevelopTask
from agents.backends.openai_compatible import TOOLS, OpenAICompatibleBackend
from agents.models import AgentConfig
from config.errors import PermanentError, TransientError
from projects.specs import Feature, ProjectSpec
from tests.conftest import LLM_API_KEY as API_KEY
from tests.fakes.llm_server import Reply, completion, error, tool_call

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
HANDLERS = "def greet(name):\n    return f'Hello {name} ✓'\n"  # not ASCII on purpose
COMMIT_AND_PUSH = (
    "git add -A && git commit -q -m 'Add greet' && git push -q origin HEAD:refs/heads/run-1 && git rev-parse HEAD"
)


@dataclass
class Worker:
    repo: Path
    remote: Path
    commands: list[list[str]]

    def exec(self, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
        self.commands.append(argv)
        base = {"PATH": os.environ["PATH"], "HOME": str(self.repo.parent), "LANG": "C.UTF-8", **GIT_ENV}
        proc = subprocess.run(argv, cwd=self.repo, env={**env, **base}, capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    def remote_sha(self, branch: str = "run-1") -> str:
        proc = subprocess.run(
            ["git", "rev-parse", f"refs/heads/{branch}"], cwd=self.remote, capture_output=True, text=True
        )
        return proc.stdout.strip()


def sh(cwd: Path, *argv: str) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    remote = tmp_path / "remote.git"
    repo = tmp_path / "work"
    repo.mkdir()
    sh(tmp_path, "git", "init", "--quiet", "--bare", str(remote))
    sh(repo, "git", "init", "--quiet", "--initial-branch=run-1")
    (repo / "TASK.md").write_text("# Task: Greeter\n")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "--quiet", "-m", "Prepare")
    sh(repo, "git", "remote", "add", "origin", str(remote))
    sh(repo, "git", "push", "--quiet", "origin", "HEAD:refs/heads/run-1")
    return Worker(repo=repo, remote=remote, commands=[])


def make_task(worker: Worker, **overrides) -> DevelopTask:
    fields = dict(
        run_id=7, iteration=1, branch="run-1", spec=SPEC, repo_dir=str(worker.repo), spec_path=".factory/spec.json"
    )
    fields.update(overrides)
    return DevelopTask(**fields)


def backend(**config) -> OpenAICompatibleBackend:
    b = get_backend(AgentConfig(role="developer", backend="openai_compatible", **config))
    assert isinstance(b, OpenAICompatibleBackend)
    return b


def last_tool_output(request: dict) -> str:
    return [m for m in request["messages"] if m["role"] == "tool"][-1]["content"]


def report_the_commit(request: dict) -> dict:
    """The model reads the sha run_shell printed and reports it, as a real one would."""
    sha = re.findall(r"\b[0-9a-f]{40}\b", last_tool_output(request))[-1]
    return completion(
        tool_calls=[
            tool_call(
                "report_result", {"status": "complete", "commit": sha, "summary": "Added greet.", "question": None}
            )
        ],
        prompt_tokens=3000,
        completion_tokens=50,
        cached_tokens=2000,
    )


def test_tool_loop_writes_commits_pushes_and_reports_the_real_commit(llm, worker):
    llm.add(
        completion(
            content="Reading the task.",
            tool_calls=[tool_call("read_file", {"path": "TASK.md"})],
            prompt_tokens=1000,
            completion_tokens=100,
        ),
        completion(
            tool_calls=[tool_call("write_file", {"path": "app/handlers.py", "content": HANDLERS})],
            prompt_tokens=2000,
            completion_tokens=200,
            cached_tokens=1000,
        ),
        completion(
            tool_calls=[tool_call("run_shell", {"command": COMMIT_AND_PUSH})],
            prompt_tokens=2500,
            completion_tokens=30,
            cached_tokens=1500,
        ),
        report_the_commit,
    )

    turn = backend(options={"input_per_mtok": 3, "output_per_mtok": 15, "cached_input_per_mtok": 0.3}).develop(
        make_task(worker), worker.exec
    )

    assert turn.problem == ""
    assert turn.result is not None and turn.result.status == "complete"
    assert turn.result.commit == worker.remote_sha()
    assert (worker.repo / "app" / "handlers.py").read_text(encoding="utf-8") == HANDLERS
    assert "# Task: Greeter" in last_tool_output(llm.requests[1])  # read_file's output went back to the model
    # Usage summed over the four turns; input excludes the cached part.
    u = turn.usage
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (8500 - 4500, 4500, 380)
    assert u.cost_usd == Decimal("0.019050")  # 4000*3 + 4500*0.3 + 380*15, per million
    assert u.model == "fake-model"


def test_requests_carry_the_model_the_tools_and_the_key_only_in_the_header(llm, worker):
    llm.add(completion(tool_calls=[tool_call("report_result", {"status": "failed", "summary": "gave up"})]))

    turn = backend(model="my-model").develop(make_task(worker), worker.exec)

    assert turn.result is not None and turn.result.status == "failed"
    body = llm.requests[0]
    assert body["model"] == "my-model"
    assert {t["function"]["name"] for t in body["tools"]} == {"run_shell", "read_file", "write_file", "report_result"}
    assert body["tools"] == TOOLS
    assert llm.headers[0]["Authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in json.dumps(body)
    prompt = body["messages"][1]["content"]
    assert "TASK.md" in prompt and "report_result" in prompt and "curl" not in prompt.lower()


def test_paths_outside_the_working_copy_are_refused(llm, worker, tmp_path):
    outside = tmp_path / "outside.txt"
    llm.add(
        completion(
            tool_calls=[
                tool_call("write_file", {"path": "../outside.txt", "content": "escaped"}, "c1"),
                tool_call("write_file", {"path": str(outside), "content": "escaped"}, "c2"),
                tool_call("read_file", {"path": "/etc/passwd"}, "c3"),
                tool_call("read_file", {"path": "sub/../../outside.txt"}, "c4"),
            ]
        ),
        completion(
            tool_calls=[tool_call("report_result", {"status": "blocked", "summary": "cannot", "question": "where?"})]
        ),
    )

    turn = backend().develop(make_task(worker), worker.exec)

    outputs = [m["content"] for m in llm.requests[1]["messages"] if m["role"] == "tool"]
    assert len(outputs) == 4 and all(o.startswith("refused") for o in outputs)
    assert not outside.exists()
    assert turn.result is not None and turn.result.status == "blocked"


def test_a_symlink_out_of_the_working_copy_is_refused_inside_the_worker(llm, worker, tmp_path):
    (worker.repo / "escape").symlink_to(tmp_path)
    llm.add(
        completion(tool_calls=[tool_call("write_file", {"path": "escape/outside.txt", "content": "x"})]),
        completion(tool_calls=[tool_call("report_result", {"status": "failed", "summary": "no"})]),
    )

    backend().develop(make_task(worker), worker.exec)

    assert "outside the working copy" in last_tool_output(llm.requests[1])
    assert not (tmp_path / "outside.txt").exists()


def test_an_invalid_report_is_sent_back_for_the_model_to_correct(llm, worker):
    llm.add(
        completion(tool_calls=[tool_call("report_result", {"status": "done", "summary": "ok"})]),
        completion(
            tool_calls=[tool_call("report_result", {"status": "complete", "commit": "not-a-sha", "summary": "ok"})]
        ),
        completion(tool_calls=[tool_call("report_result", {"status": "failed", "summary": "ok"})]),
    )

    turn = backend().develop(make_task(worker), worker.exec)

    assert "status" in last_tool_output(llm.requests[1])
    assert "commit" in last_tool_output(llm.requests[2])
    assert turn.result is not None and turn.result.status == "failed"


def test_max_turns_gives_no_result(llm, worker):
    llm.add(
        *[
            completion(
                tool_calls=[tool_call("run_shell", {"command": "echo working"})],
                prompt_tokens=100,
                completion_tokens=10,
            )
            for _ in range(3)
        ]
    )

    turn = backend(options={"max_turns": 3}).develop(make_task(worker), worker.exec)

    assert turn.result is None
    assert "max turns" in turn.problem
    assert len(llm.requests) == 3
    assert turn.usage.input_tokens == 300 and turn.usage.output_tokens == 30


def test_a_rate_limit_is_transient(llm, worker):
    llm.add(error(429, "Rate limit reached", headers={"Retry-After": "7"}))

    with pytest.raises(TransientError) as caught:
        backend().develop(make_task(worker), worker.exec)
    assert caught.value.extra["retry_after"] == "7"
    assert API_KEY not in caught.value.message


def test_a_server_error_is_transient(llm, worker):
    llm.add(error(503, "overloaded"))

    with pytest.raises(TransientError, match="503"):
        backend().develop(make_task(worker), worker.exec)


def test_a_slow_endpoint_times_out_as_transient(llm, worker):
    llm.add(Reply(200, completion(content="late"), delay=1.5))

    with pytest.raises(TransientError, match="did not answer"):
        backend(options={"request_timeout": 0.3}).develop(make_task(worker), worker.exec)


def test_a_client_error_is_permanent_and_its_message_shows_no_key(llm, worker):
    llm.add(error(401, f"Incorrect API key provided: {API_KEY}. Or was it sk-proj-abc123***xyz?"))

    with pytest.raises(PermanentError, match="Incorrect API key") as caught:
        backend().develop(make_task(worker), worker.exec)
    assert API_KEY not in caught.value.message and "abc123" not in caught.value.message


def test_an_unconfigured_endpoint_is_permanent(settings, worker):
    settings.LLM_BASE_URL = ""

    with pytest.raises(PermanentError, match="LLM_BASE_URL"):
        backend(model="m").develop(make_task(worker), worker.exec)


def test_architect_returns_a_validated_spec(llm):
    spec = {
        "name": "Greeter",
        "slug": "greeter",
        "kind": "web_service",
        "summary": "Says hello.",
        "features": [{"name": "greet", "summary": "GET /greet?name=Ada"}],
        "acceptance": [{"name": "greet", "path": "/greet?name=Ada", "expect_contains": "Ada"}],
    }
    llm.add(completion(content=json.dumps(spec), prompt_tokens=900, completion_tokens=120))

    b = backend(options={"input_per_mtok": 1, "output_per_mtok": 2})
    result = b.architect("A service that greets people by name.")

    assert result.spec == ProjectSpec.model_validate(spec)
    body = llm.requests[0]
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][-1]["content"] == "A service that greets people by name."
    assert result.usage.input_tokens == 900 and result.usage.cost_usd == Decimal("0.001140")


def test_architect_refuses_an_invalid_spec_naming_the_problem(llm):
    llm.add(
        completion(
            content=json.dumps(
                {"name": "Greeter", "slug": "Not A Slug", "kind": "web_service", "features": [{"name": "greet"}]}
            )
        )
    )

    with pytest.raises(PermanentError, match="slug"):
        backend().architect("A service that greets people.")


def test_architect_refuses_an_answer_that_is_not_json(llm):
    llm.add(completion(content="Sure! Here is your spec: name Greeter"))

    with pytest.raises(PermanentError, match="not valid"):
        backend().architect("A service that greets people.")
