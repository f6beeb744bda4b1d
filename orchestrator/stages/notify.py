"""Notify: the person's final message, rendered by code from the database, never by an agent.

An agent cannot claim a deploy that did not happen: the URL comes from the live Deployment row.
"""

from __future__ import annotations

from orchestrator.stages import Outcome, StageContext
from projects import events, runs, selectors
from projects.models import PipelineRun, RunEvent


def run(ctx: StageContext) -> Outcome:
    run = PipelineRun.objects.select_related("project").get(id=ctx.run.id)
    message = render(run)
    if run.status == PipelineRun.Status.RUNNING:
        runs.run_succeed(run_id=run.id, result_message=message)
    else:
        runs.run_set_result_message(run_id=run.id, message=message)
    events.event_record(run_id=run.id, type=RunEvent.Type.NOTIFIED, stage="notify", payload={"text": message})
    return Outcome({"message": message})


def render(run: PipelineRun) -> str:
    project = run.project
    name = project.name or f"Project #{project.id}"
    if run.status in (PipelineRun.Status.FAILED, PipelineRun.Status.CANCELLED):
        stage = run.current_stage or "first"
        return f"{name}: run #{run.id} {run.status} at the {stage} stage.\nReason: {run.error_message}"
    live = selectors.live_deployment(project_id=project.id)
    if live is None or live.run_id != run.id:
        return f"{name}: run #{run.id} finished, but no release of it is live."
    # On GitHub the person gets their repository's link too (the local code host's path is ours).
    code = f"Code: {project.repo_url}\n" if project.repo_url.startswith("http") else ""
    if project.kind == "telegram_bot":
        username = live.url.rstrip("/").rsplit("/", 1)[-1]
        return f"{name} is live.\n{code}Your bot @{username} is live: say /start to it.\n{live.url}"
    return f"{name} is live.\n{code}Service running at {live.url}"
