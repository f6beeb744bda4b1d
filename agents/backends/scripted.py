"""The scripted backend: deterministic, no LLM. Plans from a catalogue, writes code by rule.

It powers the embedded demo and the tests. ``AgentConfig.options["fail_times"]`` (or the
SCRIPTED_FAIL_TIMES setting) makes the first N developer iterations write wrong code on purpose;
``options["broken_release_times"]`` makes the first N iterations pass their tests but fail the
Deployer's health check.
"""

from __future__ import annotations

from django.conf import settings

from agents.backends.base import (
    AgentTurn,
    ArchitectResult,
    DevelopTask,
    TurnUsage,
    WorkerExec,
    parse_agent_result,
    redact_turn,
)
from agents.models import AgentConfig
from agents.scripted.catalogue import ScriptedPlanError, amend, plan
from config.errors import PermanentError
from projects.specs import ProjectSpec


class ScriptedBackend:
    name = "scripted"

    def __init__(self, config: AgentConfig):
        self.config = config

    @property
    def fail_times(self) -> int:
        return int(self.config.options.get("fail_times", settings.SCRIPTED_FAIL_TIMES))

    def architect(self, description: str) -> ArchitectResult:
        try:
            return ArchitectResult(plan(description))  # no LLM: no tokens, no cost
        except ScriptedPlanError as exc:
            raise PermanentError(str(exc), code="description_not_understood") from exc

    def amend(self, spec: ProjectSpec, change: str) -> ArchitectResult:
        """A change to a live project: the catalogue features it names added to ``spec``."""
        try:
            return ArchitectResult(amend(spec, change))
        except ScriptedPlanError as exc:
            raise PermanentError(str(exc), code="change_not_understood") from exc

    def develop(self, task: DevelopTask, run: WorkerExec) -> AgentTurn:
        argv = [
            task.python,
            "-m",
            "agents.scripted.agent",
            "develop",
            "--spec",
            task.spec_path,
            "--iteration",
            str(task.iteration),
            "--fail-times",
            str(self.fail_times),
            "--branch",
            task.branch,
            "--remote",
            "origin",
            "--work-seconds",
            str(float(self.config.options.get("work_seconds", 0))),
            "--broken-release-times",
            str(int(self.config.options.get("broken_release_times", 0))),
        ]
        # options["ask"]: the agent is blocked with this question until a person gives guidance.
        if self.config.options.get("ask"):
            argv += ["--ask", str(self.config.options["ask"])]
        if task.guidance:
            argv += ["--guidance", task.guidance]
        code, out, err = run(argv, {})
        result, problem = parse_agent_result(out)
        if result is None and code != 0:
            problem = f"{problem}; exit code {code}: {err.strip()[-500:]}"
        return redact_turn(
            AgentTurn(result=result, usage=TurnUsage(model="scripted"), log=err[-4000:], problem=problem)
        )
