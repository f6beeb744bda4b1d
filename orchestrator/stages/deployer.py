"""Deployer: start the tested commit as a new release, health-check it, then swap it in.

The previous release keeps serving until the new one is healthy and has passed the spec's
acceptance checks; a release that fails is stopped and the old one stays live (rollback), and
the failure goes back to the Developer as a failing check (or, at the iteration cap, to a
person; their answer deploys again as a new Deployment).
Idempotent: a rerun finds the run's Deployment under way and either keeps it (live) or restarts it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import structlog
from django.conf import settings

from agents.contracts import FailingTest, TestReport
from orchestrator.deploy import local
from orchestrator.git import git
from orchestrator.procs import process_alive
from orchestrator.stages import Next, Outcome, StageContext, StageFailed
from projects import deployments
from projects.models import Deployment, Stage
from projects.specs import ProjectSpec

log = structlog.get_logger(__name__)


def run(ctx: StageContext) -> Outcome:
    spec = ProjectSpec.model_validate(ctx.project.spec)
    prepared = ctx.output_of(Stage.PREPARER)
    tested = ctx.output_of(Stage.TESTER, iteration=ctx.run.iteration)
    commit = tested["commit"]
    deployment = deployments.deployment_allocate(project_id=ctx.project.id, run_id=ctx.run.id, commit_sha=commit)
    url = f"http://{settings.DEPLOY_HOST}:{deployment.port}/"
    if deployment.status == Deployment.Status.LIVE and process_alive(deployment.pid):
        # A rerun after a crash past going live: keep the release, finish what the crashed
        # attempt may have left undone.
        replaced = _settle(ctx, prepared["repo"], commit, Path(deployment.release_dir))
        return Outcome(
            {
                "deployment_id": deployment.id,
                "url": deployment.url,
                "commit": commit,
                "replaced": replaced,
                "reused": True,
            }
        )
    # A rerun after a crash: stop whatever the interrupted attempt started, then start afresh.
    local.stop(deployment_id=deployment.id, pid=deployment.pid)
    release_dir = Path(settings.FACTORY_HOME) / "releases" / ctx.project.slug / str(deployment.id)
    if release_dir.exists():
        shutil.rmtree(release_dir)
    release_dir.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "--quiet", "--no-checkout", prepared["repo"], str(release_dir))
    git("checkout", "--quiet", "--detach", commit, cwd=release_dir)
    try:
        pid = local.start(
            deployment_id=deployment.id,
            release_dir=release_dir,
            port=deployment.port,
            host=settings.DEPLOY_HOST,
            env={},
        )
    except local.ReleaseError as exc:
        deployments.deployment_fail(deployment_id=deployment.id, error=str(exc))
        raise StageFailed(str(exc), code="deploy_failed") from exc
    deployments.deployment_started(deployment_id=deployment.id, pid=pid, release_dir=str(release_dir))
    start_spec = local.read_start_spec(release_dir)
    health = local.wait_healthy(
        pid=pid, url=url, path=start_spec.health, release=str(deployment.id), timeout=settings.DEPLOY_HEALTH_TIMEOUT
    )
    problems = [] if health.ok else [health.detail]
    if health.ok:
        checks = [c for c in spec.acceptance if c.path != start_spec.health]
        problems = [r.detail for r in local.run_acceptance(url, checks) if not r.ok]
    if problems:
        local.stop(deployment_id=deployment.id, pid=pid)
        tail = _log_tail(release_dir)
        deployments.deployment_fail(deployment_id=deployment.id, error="; ".join(problems) + "\n" + tail)
        message = (
            "The new release failed its checks and was stopped; the previous release (if any) still "
            "serves: " + "; ".join(problems)
        )
        # The health failure goes back to the Developer like a failing test, within the cap.
        report = TestReport(
            errors=1,
            failing=[
                FailingTest(
                    name="deploy: health and acceptance checks", message=("; ".join(problems) + "\n" + tail)[-2000:]
                )
            ],
        )
        output = {"commit": commit, "deployment_id": deployment.id, "report": report.model_dump()}
        if ctx.run.iteration < ctx.run.max_iterations:
            return Outcome(output, Next.LOOP)
        raise StageFailed(message, code="deploy_unhealthy", output=output)
    deployments.deployment_go_live(deployment_id=deployment.id, url=url)
    replaced = _settle(ctx, prepared["repo"], commit, release_dir)
    return Outcome({"deployment_id": deployment.id, "url": url, "commit": commit, "replaced": replaced})


def _settle(ctx: StageContext, repo: str, commit: str, release_dir: Path) -> list[int]:
    """After going live: stop the releases the live one replaced, and make the deployed commit
    the project's main line (the base of its next run). Both are safe to repeat, so a rerun
    finishes what a crash between going live and here left undone."""
    replaced = []
    for old in Deployment.objects.filter(project_id=ctx.project.id, status=Deployment.Status.STOPPING):
        local.stop(deployment_id=old.id, pid=old.pid)
        deployments.deployment_stopped(deployment_id=old.id)
        replaced.append(old.id)
    git("push", "--quiet", "--force", repo, f"{commit}:refs/heads/main", cwd=release_dir)
    return replaced


def _log_tail(release_dir: Path, limit: int = 1500) -> str:
    path = release_dir.parent / f"{release_dir.name}.log"
    try:
        return path.read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return ""
