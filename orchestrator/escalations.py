"""When a stage cannot go on alone, ask a person instead of failing silently or burning money.

Which failures escalate, and the question each one asks, rendered by code from what the stage
reported (an agent's own question is quoted as such).
"""

from __future__ import annotations

from django.db import transaction

from agents import services as agent_services
from agents.models import Escalation
from orchestrator.stages import StageContext, StageFailed
from projects import runs
from projects.models import Stage

# Failures a person can do something about. Anything else (e.g. the Architect not understanding
# the description) fails the run: the person simply describes it again.
ESCALATING = {
    "agent_blocked": Escalation.Reason.AGENT_BLOCKED,
    "tests_failed": Escalation.Reason.TESTS_FAILING,
    "budget_exceeded": Escalation.Reason.BUDGET,
    "agent_failed": Escalation.Reason.STAGE_ERROR,
    "agent_no_result": Escalation.Reason.STAGE_ERROR,
    "agent_commit_missing": Escalation.Reason.STAGE_ERROR,
    "deploy_unhealthy": Escalation.Reason.STAGE_ERROR,
    "internal_error": Escalation.Reason.STAGE_ERROR,
    "stage_timeout": Escalation.Reason.STAGE_ERROR,
    "config_inconsistent": Escalation.Reason.STAGE_ERROR,
    "secrets_missing": Escalation.Reason.SECRETS_MISSING,
    "bot_token_needed": Escalation.Reason.BOT_TOKEN,
    "bot_not_polling": Escalation.Reason.STAGE_ERROR,
    "repo_name_taken": Escalation.Reason.REPO_NAME_TAKEN,
}
STAGES = (Stage.DEVELOPER, Stage.TESTER, Stage.DEPLOYER)
# The Preparer asks only this: the repository's name is someone else's (any other failure of its
# own fails the run).
PREPARER_ESCALATING = {"repo_name_taken"}


def should_escalate(stage: str, code: str) -> bool:
    if stage == Stage.PREPARER:
        return code in PREPARER_ESCALATING
    return stage in STAGES and code in ESCALATING


def question_for(ctx: StageContext, exc: StageFailed) -> str:
    reason = ESCALATING[exc.code]
    if reason == Escalation.Reason.AGENT_BLOCKED:
        return f"The developer agent is stuck and asks:\n«{exc.message}»\nReply with your answer."
    if reason == Escalation.Reason.TESTS_FAILING:
        failing = ", ".join(t["name"] for t in (exc.output or {}).get("report", {}).get("failing", [])[:5])
        return (
            f"The tests still fail after {ctx.run.iteration} tries ({failing or 'see the report'}). "
            'Reply with guidance for the developer (e.g. "try a different library"), or /cancel.'
        )
    if reason == Escalation.Reason.BUDGET:
        out = exc.output or {}
        return (
            f"The {out.get('scope', 'run')} budget is spent (${out.get('spent_usd', 0):.2f} of "
            f"${out.get('budget_usd', 0):.2f}). Reply /budget <dollars> to raise it, or /cancel."
        )
    if reason == Escalation.Reason.SECRETS_MISSING:
        names = ", ".join((exc.output or {}).get("missing", []))
        return (
            f"Before it can go live, your project needs these secrets: {names}.\n"
            "Send each with /secret NAME, then the value in the next message (it is stored encrypted and "
            f"deleted from this chat), or over the API: PUT /api/projects/{ctx.project.id}/secrets/NAME/. "
            "The deploy goes on once every one is there; /cancel to stop."
        )
    if reason == Escalation.Reason.BOT_TOKEN:
        why = (
            "you asked for your own bot"
            if (exc.output or {}).get("reason") == "own_bot"
            else "the factory has no free bot right now"
        )
        return (
            f"Your bot needs a Telegram bot token ({why}). Create a bot with @BotFather, then reply to this "
            "message with its token, or send /token. The message with the token is deleted from this chat "
            "and the token is stored encrypted; no agent ever sees it. /cancel to stop."
        )
    if reason == Escalation.Reason.REPO_NAME_TAKEN:
        taken = (exc.output or {}).get("repository") or ctx.project.slug
        return (
            f"The repository {taken} already exists on GitHub and is not this project's, so your project "
            f"needs another name. Reply with the new name (lowercase letters, digits and dashes, e.g. "
            f"'{ctx.project.slug}-2'), or /cancel."
        )
    return f"The {ctx.stage_run.stage} stage failed: {exc.message}\nReply with guidance to try again, or /cancel."


@transaction.atomic
def escalate(ctx: StageContext, exc: StageFailed) -> Escalation | None:
    row = ctx.stage_run
    question = question_for(ctx, exc)
    context = {
        "code": exc.code,
        "message": exc.message[:2000],
        "iteration": ctx.run.iteration,
        "output": exc.output or {},
    }
    if exc.code == "tests_failed":
        # Close this iteration's tests; the next iteration's Developer waits for the answer.
        if not runs.stage_loop_back(
            stage_run_id=row.id, attempt=row.attempt, output=exc.output or {}, message=exc.message, announce=False
        ):
            return None
        return agent_services.escalation_raise(
            run_id=ctx.run.id, stage=Stage.DEVELOPER, reason=ESCALATING[exc.code], question=question, context=context
        )
    return agent_services.escalation_raise(
        run_id=ctx.run.id,
        stage=row.stage,
        stage_run_id=row.id,
        attempt=row.attempt,
        reason=ESCALATING[exc.code],
        question=question,
        context=context,
    )
