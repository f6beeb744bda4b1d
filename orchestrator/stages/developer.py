"""Developer: a coding agent implements TASK.md inside the project's worker and pushes.

The agent reports back on two channels: its process ends with an AgentResult on stdout
(channel 1), or it runs ``orchestrator-cli result ...`` from inside the worker (channel 2). An
agent that leaves no result gets exactly one automatic resume; then the stage fails. Every turn
is written to the ledger, and budgets are checked before and after each turn.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import structlog
from django.conf import settings

from agents import selectors as agent_selectors
from agents import services as agent_services
from agents.backends import AgentTurn, DevelopTask, get_backend
from agents.contracts import TestReport
from agents.models import AgentConfig, Role, WorkerSession
from config.errors import PermanentError
from orchestrator import workers
from orchestrator.git import branch_sha
from orchestrator.stages import Outcome, StageContext, StageFailed
from orchestrator.stages.preparer import SPEC_PATH
from projects.models import PipelineRun, Stage, StageRun
from projects.specs import ProjectSpec

log = structlog.get_logger(__name__)


def run(ctx: StageContext) -> Outcome:
    prepared = ctx.output_of(Stage.PREPARER)
    if ctx.run.kind == PipelineRun.Kind.REDEPLOY:
        # The deployed commit again, as a new release: nothing to write, no agent turn, no cost.
        return Outcome({"commit": prepared["commit"], "summary": "redeploy: the deployed commit, unchanged"})
    spec = ProjectSpec.model_validate(ctx.project.spec)
    config = agent_services.agent_config_for(role=Role.DEVELOPER)
    problem = config.time_limit_problem()
    if problem:  # the settings changed since the config was saved
        raise StageFailed(problem, code="config_inconsistent")
    try:
        backend = get_backend(config)
    except PermanentError as exc:
        raise StageFailed(exc.message, code=exc.code) from exc
    check_budget(ctx, config)
    session = workers.session_acquire(project_id=ctx.project.id, run_id=ctx.run.id, role=Role.DEVELOPER, config=config)
    repo = workers.workspace_checkout(session, remote=prepared["repo"], branch=prepared["branch"])
    runtime = workers.runtime_of(session)
    task = DevelopTask(
        run_id=ctx.run.id,
        iteration=ctx.run.iteration,
        branch=prepared["branch"],
        spec=spec,
        repo_dir=str(repo),
        spec_path=SPEC_PATH,
        previous_report=_previous_report(ctx),
        python=runtime.python,
        agent_session_id=agent_services.session_resumable_agent(session),
        guidance=agent_selectors.latest_guidance(run_id=ctx.run.id),
    )
    # Channel 2: the worker's own short-lived token, scoped to this run, for orchestrator-cli.
    token = agent_services.session_issue_token(session_id=session.id, run_id=ctx.run.id)
    channel = {
        "FACTORY_API_URL": settings.FACTORY_API_URL,
        "FACTORY_API_TOKEN": token,
        "FACTORY_RUN_ID": str(ctx.run.id),
        "FACTORY_PYTHON": runtime.python,
    }

    def in_worker(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
        result = workers.session_exec(
            session, argv, cwd=repo, env={**env, **channel}, timeout=config.time_limit_seconds
        )
        return result.exit_code, result.stdout, result.stderr

    try:
        turn = _turn(ctx, backend, config, session, task, in_worker)
        if turn.result is None:  # one automatic resume, then the stage fails
            log.warning("agent_no_result", problem=turn.problem)
            check_budget(ctx, config)
            turn = _turn(
                ctx,
                backend,
                config,
                session,
                replace(task, resume=True, agent_session_id=turn.agent_session_id),
                in_worker,
            )
    finally:
        workers.session_idle(session=session, reason="developer finished")
    if turn.result is None:
        raise StageFailed(
            f"The developer agent stopped twice without reporting a result ({turn.problem}).", code="agent_no_result"
        )
    result = turn.result
    if result.status == "blocked":
        raise StageFailed(
            result.question or result.summary or "The agent is blocked and gave no question.",
            code="agent_blocked",
            output={"summary": result.summary},
        )
    if result.status != "complete":
        detail = result.summary or "no reason given"
        raise StageFailed(f"The developer agent reported {result.status}: {detail}", code=f"agent_{result.status}")
    pushed = branch_sha(Path(prepared["repo"]), prepared["branch"])
    if not result.commit or not pushed or not pushed.startswith(result.commit):
        raise StageFailed(
            f"The developer agent reported commit {result.commit}, but the branch {prepared['branch']} is at {pushed}.",
            code="agent_commit_missing",
        )
    return Outcome({"commit": pushed, "summary": result.summary, "session_id": session.id})


def _turn(
    ctx: StageContext, backend, config: AgentConfig, session: WorkerSession, task: DevelopTask, in_worker
) -> AgentTurn:
    turn = backend.develop(task, in_worker)
    u = turn.usage
    agent_services.usage_record(
        project_id=ctx.project.id,
        stage_run_id=ctx.stage_run.id,
        stage_attempt=ctx.stage_run.attempt,
        session_id=session.id,
        role=Role.DEVELOPER,
        backend=backend.name,
        model=u.model or config.model,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read_tokens,
        cache_write_tokens=u.cache_write_tokens,
        cost_usd=u.cost_usd,
    )
    agent_services.session_record_agent(
        session_id=session.id,
        agent_session_id=turn.agent_session_id,
        context_tokens=u.input_tokens + u.cache_read_tokens + u.cache_write_tokens,
    )
    # Channel 2 wins when the agent reported through orchestrator-cli.
    reported = agent_services.session_take_result(session_id=session.id)
    if reported is not None:
        turn.result = reported
    check_budget(ctx, config)
    return turn


def check_budget(ctx: StageContext, config: AgentConfig) -> None:
    """Stop before money runs away: the run's, the project's and this stage's budget."""
    spent = agent_selectors.spend(run_id=ctx.run.id, project_id=ctx.project.id, stage_run_id=ctx.stage_run.id)
    limits = [
        ("run", spent.run, ctx.run.budget_usd),
        ("project", spent.project, settings.PROJECT_BUDGET_USD),
        ("stage", spent.stage, config.budget_usd),
    ]
    for scope, used, limit in limits:
        if limit is not None and used >= float(limit):
            raise StageFailed(
                f"The {scope} budget is spent: ${used:.4f} of ${float(limit):.4f}. The agent was stopped.",
                code="budget_exceeded",
                output={"scope": scope, "spent_usd": used, "budget_usd": float(limit)},
            )


def _previous_report(ctx: StageContext) -> TestReport | None:
    if ctx.run.iteration <= 1:
        return None
    # The code host's CI failed the previous iteration's commit (the Deployer sent it back).
    deploy = (
        StageRun.objects.filter(run=ctx.run, stage=Stage.DEPLOYER).order_by("-id").values_list("output", flat=True)
    ).first()
    if deploy and deploy.get("checks_iteration") == ctx.run.iteration - 1 and "report" in deploy:
        return TestReport.model_validate(deploy["report"])
    row = StageRun.objects.filter(run=ctx.run, stage=Stage.TESTER, iteration=ctx.run.iteration - 1).first()
    if row is None or not row.output or "report" not in row.output:
        return None
    return TestReport.model_validate(row.output["report"])
