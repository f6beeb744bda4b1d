"""Developer: a coding agent implements TASK.md inside the project's worker and pushes."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import structlog

from agents import services as agent_services
from agents.backends import AgentTurn, DevelopTask, get_backend
from agents.contracts import TestReport
from agents.models import Role
from config.errors import PermanentError
from orchestrator import workers
from orchestrator.git import branch_sha
from orchestrator.stages import Outcome, StageContext, StageFailed
from orchestrator.stages.preparer import SPEC_PATH
from projects.models import Stage, StageRun
from projects.specs import ProjectSpec

log = structlog.get_logger(__name__)


def run(ctx: StageContext) -> Outcome:
    spec = ProjectSpec.model_validate(ctx.project.spec)
    prepared = ctx.output_of(Stage.PREPARER)
    config = agent_services.agent_config_for(role=Role.DEVELOPER)
    try:
        backend = get_backend(config)
    except PermanentError as exc:
        raise StageFailed(exc.message, code=exc.code) from exc
    session = workers.session_acquire(project_id=ctx.project.id, run_id=ctx.run.id, role=Role.DEVELOPER,
                                      config=config)
    repo = workers.workspace_checkout(session, remote=prepared["repo"], branch=prepared["branch"])
    task = DevelopTask(
        run_id=ctx.run.id, iteration=ctx.run.iteration, branch=prepared["branch"], spec=spec,
        repo_dir=str(repo), spec_path=SPEC_PATH, previous_report=_previous_report(ctx),
        python=workers.runtime_of(session).python,
    )

    def in_worker(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
        result = workers.session_exec(session, argv, cwd=repo, env=env, timeout=config.time_limit_seconds)
        return result.exit_code, result.stdout, result.stderr

    turn = _turn(ctx, backend, config, session.id, task, in_worker)
    if turn.result is None:  # one automatic resume, then the stage fails
        log.warning("agent_no_result", problem=turn.problem)
        turn = _turn(ctx, backend, config, session.id, replace(task, resume=True), in_worker)
    workers.session_idle(session=session, reason="developer finished")
    if turn.result is None:
        raise StageFailed(f"The developer agent stopped twice without reporting a result ({turn.problem}).",
                          code="agent_no_result")
    result = turn.result
    if result.status != "complete":
        detail = result.question or result.summary or "no reason given"
        raise StageFailed(f"The developer agent reported {result.status}: {detail}", code=f"agent_{result.status}")
    pushed = branch_sha(Path(prepared["repo"]), prepared["branch"])
    if not result.commit or not pushed or not pushed.startswith(result.commit):
        raise StageFailed(
            f"The developer agent reported commit {result.commit}, but the branch {prepared['branch']} is at {pushed}.",
            code="agent_commit_missing",
        )
    return Outcome({"commit": pushed, "summary": result.summary, "session_id": session.id})


def _turn(ctx: StageContext, backend, config, session_id: int, task: DevelopTask, in_worker) -> AgentTurn:
    turn = backend.develop(task, in_worker)
    u = turn.usage
    agent_services.usage_record(
        project_id=ctx.project.id, stage_run_id=ctx.stage_run.id, session_id=session_id, role=Role.DEVELOPER,
        backend=backend.name, model=u.model or config.model, input_tokens=u.input_tokens,
        output_tokens=u.output_tokens, cache_read_tokens=u.cache_read_tokens,
        cache_write_tokens=u.cache_write_tokens, cost_usd=u.cost_usd,
    )
    return turn


def _previous_report(ctx: StageContext) -> TestReport | None:
    if ctx.run.iteration <= 1:
        return None
    row = StageRun.objects.filter(run=ctx.run, stage=Stage.TESTER, iteration=ctx.run.iteration - 1).first()
    if row is None or not row.output or "report" not in row.output:
        return None
    return TestReport.model_validate(row.output["report"])
