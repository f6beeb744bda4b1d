"""The AgentBackend protocol and the pieces every backend shares."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Protocol

from pydantic import ValidationError

from agents.contracts import AgentResult, TestReport
from projects.specs import ProjectSpec

# Runs a command inside the agent's worker: (argv, env) -> (exit code, stdout, stderr).
WorkerExec = Callable[[list[str], dict[str, str]], tuple[int, str, str]]


@dataclass(frozen=True)
class DevelopTask:
    """Everything a developer agent is given: never a secret value, only names."""

    run_id: int
    iteration: int
    branch: str
    spec: ProjectSpec
    repo_dir: str  # the working copy, inside the worker
    spec_path: str  # the spec inside the working copy
    python: str = "python3"  # the interpreter inside the worker
    previous_report: TestReport | None = None
    resume: bool = False


@dataclass(frozen=True)
class TurnUsage:
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: Decimal = Decimal("0")


@dataclass
class AgentTurn:
    """One agent invocation: its structured result (None if it left none) and what it cost."""

    result: AgentResult | None
    usage: TurnUsage = field(default_factory=TurnUsage)
    log: str = ""
    problem: str = ""  # why there is no result, for the person


class AgentBackend(Protocol):
    name: str

    def architect(self, description: str) -> ProjectSpec:
        """Turn a description into a spec, or raise PermanentError saying why not."""

    def develop(self, task: DevelopTask, run: WorkerExec) -> AgentTurn:
        """Implement the task inside the worker through ``run``."""


def parse_agent_result(stdout: str) -> tuple[AgentResult | None, str]:
    """The last JSON line of an agent's output, validated; or None and what was wrong with it."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        return None, "the agent printed no result"
    try:
        return AgentResult.model_validate(json.loads(lines[-1])), ""
    except json.JSONDecodeError:
        return None, "the agent's last line is not JSON"
    except ValidationError as exc:
        return None, f"the agent's result is malformed: {exc.errors()[0]['msg']}"
