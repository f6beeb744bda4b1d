"""The Claude Code backend: ``claude -p`` headless inside the worker, one JSON result per turn.

The CLI runs in the project's working copy with ``--output-format json`` and prints one result
object (``type``, ``subtype``, ``is_error``, ``result``, ``session_id``, ``num_turns``,
``duration_ms``, ``total_cost_usd``, ``usage``). The agent's own report, an ``AgentResult``, is the
last JSON line of its final message (``result``). ``--resume <session_id>`` continues the agent's
conversation when the task carries one. The API key reaches the worker as an environment
variable only, never on the command line.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.backends.base import (
    AgentTurn,
    ArchitectResult,
    DevelopTask,
    TurnUsage,
    WorkerExec,
    develop_prompt,
    redact_turn,
)
from agents.contracts import AgentResult
from agents.models import AgentConfig
from config.errors import PermanentError

REPORT_INSTRUCTIONS = (
    "When you stop (done, blocked or failed), end your final message with exactly one line of JSON "
    "and nothing after it:\n"
    '{"status": "complete" | "blocked" | "failed", "commit": "<the full sha you pushed>", '
    '"summary": "<what you did>", "question": "<what you need, if blocked; else null>"}'
)
ERROR_SUBTYPES = {
    "error_max_turns": "hit max turns",
    "error_during_execution": "failed during execution",
    "error_max_budget_usd": "hit its budget",
}


class ClaudeUsage(BaseModel):
    model_config = ConfigDict(extra="allow")
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cache_read_input_tokens: int = Field(default=0, ge=0)
    cache_creation_input_tokens: int = Field(default=0, ge=0)


class ClaudeResult(BaseModel):
    """The result object ``claude -p --output-format json`` prints; new fields are tolerated."""

    model_config = ConfigDict(extra="allow")
    type: str
    subtype: str
    is_error: bool = False
    result: str | None = None
    session_id: str | None = None
    num_turns: int = 0
    duration_ms: float = 0
    total_cost_usd: float = 0.0
    usage: ClaudeUsage = Field(default_factory=ClaudeUsage)


def parse_cli_output(stdout: str) -> tuple[ClaudeResult | None, str]:
    """The CLI's result object, or None and what was wrong with the output."""
    text = stdout.strip()
    if not text:
        return None, "Claude Code printed nothing"
    candidates = [text] + [line for line in reversed(text.splitlines()) if line.strip()]
    data = None
    for candidate in candidates:
        try:
            data = json.loads(candidate)
            break
        except json.JSONDecodeError:
            continue
    if isinstance(data, list):  # --verbose prints the whole conversation: the result comes last
        data = next((m for m in reversed(data) if isinstance(m, dict) and m.get("type") == "result"), None)
    if not isinstance(data, dict):
        return None, "Claude Code's output is not a JSON result object"
    try:
        parsed = ClaudeResult.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return None, f"Claude Code's result object is malformed ({where}: {first['msg']})"
    if parsed.type != "result":
        return None, f"Claude Code printed a {parsed.type!r} message instead of a result"
    return parsed, ""


def find_agent_result(text: str) -> tuple[AgentResult | None, str]:
    """The last line of the agent's final message that is a valid AgentResult."""
    problem = "the agent's final message has no AgentResult JSON line"
    for raw in reversed(text.strip().splitlines()):
        line = raw.strip().strip("`").strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        try:
            return AgentResult.model_validate(data), ""
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "result"
            problem = f"the agent's result line is malformed ({where}: {first['msg']})"
            break  # the agent's last attempt at a report is the one that counts
    return None, problem


class ClaudeCodeBackend:
    name = "claude_code"

    def __init__(self, config: AgentConfig):
        self.config = config
        # The session this instance last ran: the automatic resume continues it when the
        # caller does not hand the id back itself.
        self._last_session_id: str | None = None

    def architect(self, description: str) -> ArchitectResult:
        raise PermanentError(
            "The Claude Code backend runs inside a project's worker, and the architect has none yet. "
            "Set the architect role's backend to 'openai_compatible' or 'scripted' in admin (Agent configs).",
            code="backend_not_available",
        )

    def argv(self, prompt: str, session_id: str | None) -> list[str]:
        if prompt.startswith("-"):  # never let a prompt read as an option
            prompt = " " + prompt
        argv = [settings.CLAUDE_BIN, "-p", prompt, "--output-format", "json", "--dangerously-skip-permissions"]
        if self.config.model:
            argv += ["--model", self.config.model]
        max_turns = self.config.options.get("max_turns")
        if max_turns:
            argv += ["--max-turns", str(int(max_turns))]
        if session_id:
            argv += ["--resume", session_id]
        return argv

    def env(self) -> dict[str, str]:
        key = settings.ANTHROPIC_API_KEY
        if not key:
            raise PermanentError(
                "The Claude Code backend needs ANTHROPIC_API_KEY in the factory's environment.",
                code="agent_not_configured",
            )
        env = {"ANTHROPIC_API_KEY": key}
        # A worker is a disposable sandbox; as root, Claude Code refuses to skip permissions
        # unless told so. options {"sandbox": false} leaves the CLI's own guard in place.
        if self.config.options.get("sandbox", True):
            env["IS_SANDBOX"] = "1"
        return env

    def develop(self, task: DevelopTask, run: WorkerExec) -> AgentTurn:
        return redact_turn(self._develop(task, run))

    def _develop(self, task: DevelopTask, run: WorkerExec) -> AgentTurn:
        session_id = task.agent_session_id or (self._last_session_id if task.resume else None)
        report = REPORT_INSTRUCTIONS
        prompt = develop_prompt(
            task, template=self.config.prompt_template, report=report, continuing=bool(session_id) and task.resume
        )
        code, out, err = run(self.argv(prompt, session_id), self.env())
        log = err[-4000:]
        cli, problem = parse_cli_output(out)
        if cli is None:
            detail = f"exit code {code}" + (", killed: the time limit?" if code in (-9, 137) else "")
            detail += f": {err.strip()[-500:]}" if err.strip() else ""
            return AgentTurn(
                result=None,
                usage=TurnUsage(model=self.config.model),
                log=log,
                problem=f"{problem} ({detail})",
                agent_session_id=session_id,
            )
        self._last_session_id = cli.session_id or session_id
        usage = self._usage(cli)
        log = ((cli.result or "")[-4000:] + ("\n" + log if log else "")).strip()
        turn = AgentTurn(result=None, usage=usage, log=log, agent_session_id=self._last_session_id)
        if cli.subtype != "success":
            what = ERROR_SUBTYPES.get(cli.subtype, f"stopped with {cli.subtype}")
            turn.problem = f"Claude Code {what} after {cli.num_turns} turns"
            return turn
        if cli.is_error:
            turn.problem = f"Claude Code reported an error: {(cli.result or 'no message').strip()[:500]}"
            return turn
        turn.result, turn.problem = find_agent_result(cli.result or "")
        return turn

    def _usage(self, cli: ClaudeResult) -> TurnUsage:
        model = self.config.model
        model_usage = getattr(cli, "modelUsage", None)
        if not model and isinstance(model_usage, dict) and model_usage:
            model = str(next(iter(model_usage)))[:100]
        cost = cli.total_cost_usd if math.isfinite(cli.total_cost_usd) and cli.total_cost_usd > 0 else 0.0
        return TurnUsage(
            model=model,
            input_tokens=cli.usage.input_tokens,
            output_tokens=cli.usage.output_tokens,
            cache_read_tokens=cli.usage.cache_read_input_tokens,
            cache_write_tokens=cli.usage.cache_creation_input_tokens,
            cost_usd=Decimal(str(cost)).quantize(Decimal("0.000001")),
        )
