"""Deployer: start the tested commit as a new release, health-check it, then swap it in.

The previous release keeps serving until the new one is healthy and has passed the spec's
acceptance checks; a release that fails is stopped and the old one stays live (rollback).
Idempotent: a rerun finds the run's Deployment and either keeps it (live) or restarts it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import structlog
from django.conf import settings

from orchestrator.deploy import local
from orchestrator.git import git
from orchestrator.procs import process_alive
from orchestrator.stages import Outcome, StageContext, StageFailed
from projects import services as project_services
from projects.models import Deployment, Stage
from projects.specs import ProjectSpec

log = structlog.get_logger(__name__)


def run(ctx: StageContext) -> Outcome:
    spec = ProjectSpec.model_validate(ctx.project.spec)
    prepared = ctx.output_of(Stage.PREPARER)
    tested = ctx.output_of(Stage.TESTER, iteration=ctx.run.iteration)
    commit = tested["commit"]
    deployment = project_services.deployment_allocate(project_id=ctx.project.id, run_id=ctx.run.id, commit_sha=commit)
    url = f"http://{settings.DEPLOY_HOST}:{deployment.port}/"
    if deployment.status == Deployment.Status.LIVE and process_alive(deployment.pid):
        return Outcome({"deployment_id": deployment.id, "url": deployment.url, "reused": True})
    if deployment.status != Deployment.Status.STARTING:
        raise StageFailed(f"Deployment #{deployment.id} is {deployment.status}; start a new run.", code="deploy_failed")
    # A rerun after a crash: stop whatever the interrupted attempt started, then start afresh.
    local.stop(deployment_id=deployment.id, pid=deployment.pid)
    release_dir = Path(settings.FACTORY_HOME) / "releases" / ctx.project.slug / str(deployment.id)
    if release_dir.exists():
        shutil.rmtree(release_dir)
    release_dir.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "--quiet", "--no-checkout", prepared["repo"], str(release_dir))
    git("checkout", "--quiet", "--detach", commit, cwd=release_dir)
    try:
        pid = local.start(deployment_id=deployment.id, release_dir=release_dir, port=deployment.port,
                          host=settings.DEPLOY_HOST, env={})
    except local.ReleaseError as exc:
        project_services.deployment_fail(deployment_id=deployment.id, error=str(exc))
        raise StageFailed(str(exc), code="deploy_failed") from exc
    project_services.deployment_started(deployment_id=deployment.id, pid=pid, release_dir=str(release_dir))
    start_spec = local.read_start_spec(release_dir)
    health = local.wait_healthy(pid=pid, url=url, path=start_spec.health, release=str(deployment.id),
                                timeout=settings.DEPLOY_HEALTH_TIMEOUT)
    problems = [] if health.ok else [health.detail]
    if health.ok:
        checks = [c for c in spec.acceptance if c.path != start_spec.health]
        problems = [r.detail for r in local.run_acceptance(url, checks) if not r.ok]
    if problems:
        local.stop(deployment_id=deployment.id, pid=pid)
        tail = _log_tail(release_dir)
        project_services.deployment_fail(deployment_id=deployment.id, error="; ".join(problems) + "\n" + tail)
        raise StageFailed(
            "The new release failed its checks and was stopped; the previous release (if any) still serves: "
            + "; ".join(problems), code="deploy_unhealthy",
        )
    replaced = project_services.deployment_go_live(deployment_id=deployment.id, url=url)
    for old in replaced:
        local.stop(deployment_id=old.id, pid=old.pid)
        project_services.deployment_stopped(deployment_id=old.id)
    # The deployed commit becomes the project's main line, the base of its next run.
    git("push", "--quiet", "--force", prepared["repo"], f"{commit}:refs/heads/main", cwd=release_dir)
    return Outcome({"deployment_id": deployment.id, "url": url, "commit": commit,
                    "replaced": [d.id for d in replaced]})


def _log_tail(release_dir: Path, limit: int = 1500) -> str:
    path = release_dir.parent / f"{release_dir.name}.log"
    try:
        return path.read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return ""
