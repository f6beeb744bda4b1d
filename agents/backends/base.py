"""The AgentBackend protocol and the pieces every backend shares."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from pydantic import ValidationError

from agents.contracts import AgentResult, TestReport
from projects.specs import ProjectSpec
from secrets_meta import redaction

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
    # The agent's own conversation to continue (Claude Code's session id), from the last turn.
    agent_session_id: str | None = None
    # A person's answer to the agent's question (or guidance after failures), for this turn.
    guidance: str | None = None


@dataclass(frozen=True)
class TurnUsage:
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: Decimal = Decimal("0")


@dataclass(frozen=True)
class ArchitectResult:
    """The Architect's answer: the spec, and what producing it cost (recorded in the ledger)."""

    spec: ProjectSpec
    usage: TurnUsage = field(default_factory=TurnUsage)


@dataclass
class AgentTurn:
    """One agent invocation: its structured result (None if it left none) and what it cost."""

    result: AgentResult | None
    usage: TurnUsage = field(default_factory=TurnUsage)
    log: str = ""
    problem: str = ""  # why there is no result, for the person
    agent_session_id: str | None = None  # for the caller to store and hand back as DevelopTask.agent_session_id


def redact_turn(turn: AgentTurn) -> AgentTurn:
    """Defense in depth: every secret value this process knows (``secrets_meta.redaction``; the
    project's are loaded when its worker gets its token) out of what the agent said."""
    turn.log, turn.problem = redaction.redact(turn.log), redaction.redact(turn.problem)
    if turn.result is not None:
        turn.result = turn.result.model_copy(update=redaction.redact_data(turn.result.model_dump()))
    return turn


class AgentBackend(Protocol):
    name: str

    def architect(self, description: str) -> ArchitectResult:
        """Turn a description into a spec (with its usage), or raise PermanentError saying why not."""

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


DEFAULT_DEVELOP_PROMPT = """You are the developer agent for "{spec_name}" (run {run_id}, iteration {iteration}).
The current directory is the project's git working copy, on branch {branch}.
Read TASK.md (what to build) and AGENTS.md (how to work here); {spec_path} is the same task as data.
Implement the task, add tests, and run them with `python -m pytest` until they pass.
Then commit your work and push it: `git push origin HEAD:{branch}`.
{failing_tests}
{report}"""

RESUME_PROMPT = """Continue the task in TASK.md from where you stopped: the working copy holds your work so far.
Finish it, make `python -m pytest` pass, commit, and push to the branch {branch}.
{failing_tests}
{report}"""

# Placeholders a prompt template (AgentConfig.prompt_template) may use, as {name}.
PROMPT_PLACEHOLDERS = (
    "spec_name",
    "run_id",
    "iteration",
    "branch",
    "spec_path",
    "failing_tests",
    "report",
)


def failing_tests_text(report: TestReport | None, limit: int = 20) -> str:
    """What the tester found last time, for the agent to fix; empty if there is nothing."""
    if report is None or report.ok:
        return ""
    lines = [
        f"The last test run failed ({report.passed} passed, {report.failed} failed, {report.errors} errors). Fix these:"
    ]
    lines += [f"- {t.name}" + (f": {t.message}" if t.message else "") for t in report.failing[:limit]]
    if len(report.failing) > limit:
        lines.append(f"- ... and {len(report.failing) - limit} more")
    return "\n".join(lines) + "\n"


def develop_prompt(task: DevelopTask, *, template: str, report: str, continuing: bool) -> str:
    """The developer's prompt: the role's template (or the default), the failing tests, how to report.

    ``continuing``: the agent's own conversation is resumed, so a short "continue" suffices.
    Placeholders are replaced by name only, so a template may hold literal JSON braces. The
    report instructions and failing tests are appended when a template leaves them out: they
    are the contract the factory depends on. Never a secret here: the prompt is on a command line.
    """
    failing = failing_tests_text(task.previous_report)
    if continuing:
        text = RESUME_PROMPT
    else:
        text = template.strip() or DEFAULT_DEVELOP_PROMPT
        if task.resume:
            text = (
                "A previous attempt at this task stopped without reporting a result; continue "
                "from the state of the working copy.\n\n" + text
            )
    values = {
        "spec_name": task.spec.name,
        "run_id": str(task.run_id),
        "iteration": str(task.iteration),
        "branch": task.branch,
        "spec_path": task.spec_path,
        "failing_tests": failing,
        "report": report,
    }
    missing = [name for name in ("failing_tests", "report") if "{" + name + "}" not in text]
    for name in PROMPT_PLACEHOLDERS:
        text = text.replace("{" + name + "}", values[name])
    for name in missing:
        if values[name]:
            text = text.rstrip() + "\n\n" + values[name]
    if task.guidance:  # a person's words, quoted as such
        text = text.rstrip() + "\n\nGuidance from the person you asked:\n> " + task.guidance.replace("\n", "\n> ")
    return "\n".join(line.rstrip() for line in text.strip().splitlines()) + "\n"
