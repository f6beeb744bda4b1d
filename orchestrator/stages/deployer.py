"""Deployer: start the tested commit as a new release, health-check it, then swap it in.

The previous release keeps serving until the new one is healthy and has passed the spec's
acceptance checks; a release that fails is stopped and the old one stays live (rollback), and
the failure goes back to the Developer as a failing check (or, at the iteration cap, to a
person; their answer deploys again as a new Deployment).
Idempotent: a rerun finds the run's Deployment under way and either keeps it (live) or restarts it
(first stopping whatever of it still runs: a release started by an attempt killed before it
recorded the pid). One deploy per project at a time: the stage holds the project's deploy lock
(a database row) from before it starts a release until it ends; a second deploy waits.
Releases run on the deploy target their row names (`DEPLOY_TARGET` when it was made).
On GitHub, the check runs of the exact commit to deploy must pass first (a failure goes back to
the Developer with its log excerpt, like a failed test), and a release that went live has its
pull request squash-merged (``orchestrator.codehost``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import structlog
from django.conf import settings
from django.utils import timezone

from agents.contracts import FailingTest, TestReport
from config.errors import PermanentError, TransientError
from orchestrator import bots
from orchestrator.codehost import get_host
from orchestrator.deploy import botcheck, caddy, environment, local, targets
from orchestrator.git import git
from orchestrator.stages import Next, Outcome, StageContext, StageFailed, StageWait
from orchestrator.telegram import transport
from orchestrator.telegram.standin import StandIn
from projects import deployments
from projects.models import Deployment, Stage, StageRun
from projects.specs import ProjectSpec
from secrets_meta import redaction

log = structlog.get_logger(__name__)


def run(ctx: StageContext) -> Outcome:
    sent_back = _wait_for_checks(ctx)
    if sent_back is not None:
        return sent_back
    holder = deployments.deploy_lock_acquire(project_id=ctx.project.id, stage_run_id=ctx.stage_run.id)
    if holder is not None:
        raise StageWait(
            f"Another deploy of this project (run {holder}) is under way; this one waits.", code="deploy_busy"
        )
    try:
        return _deploy(ctx)
    finally:
        deployments.deploy_lock_release(project_id=ctx.project.id, stage_run_id=ctx.stage_run.id)


def _alive(target: targets.DeployTarget, deployment_id: int, pid: int):
    return lambda: target.alive(deployment_id=deployment_id, pid=pid)


def _deploy(ctx: StageContext) -> Outcome:
    spec = ProjectSpec.model_validate(ctx.project.spec)
    prepared = ctx.output_of(Stage.PREPARER)
    tested = ctx.output_of(Stage.TESTER, iteration=ctx.run.iteration)
    commit = tested["commit"]
    # What the release needs before anything starts: its secrets, and a bot's token. Missing
    # ones make the run wait for the person (an escalation), not fail.
    bot, public_url, deployment, env = _values(ctx, spec)
    url = _loopback_url(deployment.port)
    target = targets.target_for(deployment)
    if deployment.status == Deployment.Status.LIVE and target.alive(deployment_id=deployment.id, pid=deployment.pid):
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
    # A rerun after a crash: stop whatever the interrupted attempt started (by its marker, even
    # one whose pid was never recorded), then start afresh.
    target.stop(deployment_id=deployment.id, pid=deployment.pid)
    release_dir = Path(settings.FACTORY_HOME) / "releases" / ctx.project.slug / str(deployment.id)
    if release_dir.exists():
        shutil.rmtree(release_dir)
    release_dir.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "--quiet", "--no-checkout", prepared["repo"], str(release_dir))
    git("checkout", "--quiet", "--detach", commit, cwd=release_dir)
    if bot is not None:
        return _deploy_bot(ctx, spec, deployment, release_dir, env, bot, commit, prepared["repo"])
    pid = _start(deployment, release_dir, env)
    start_spec = local.read_start_spec(release_dir)
    health = local.wait_healthy(
        pid=pid,
        url=url,
        path=start_spec.health,
        release=str(deployment.id),
        timeout=settings.DEPLOY_HEALTH_TIMEOUT,
        alive=_alive(target, deployment.id, pid),
    )
    problems = [] if health.ok else [health.detail]
    if health.ok:
        checks = [c for c in spec.acceptance if c.path != start_spec.health]
        problems = [r.detail for r in local.run_acceptance(url, checks) if not r.ok]
    if problems:
        tail = target.log_tail(deployment_id=deployment.id, release_dir=release_dir)
        target.stop(deployment_id=deployment.id, pid=pid)
        return _failed(ctx, deployment.id, tail, problems, commit)
    # Healthy: only now does the name point at it (the route is swapped in place).
    router = caddy.get_router()
    if router is not None:
        upstream = f"{settings.DEPLOY_HOST}:{deployment.port}"
        router.set_route(caddy.Route(slug=ctx.project.slug, host=caddy.host_for(ctx.project.slug), upstream=upstream))
    deployments.deployment_go_live(deployment_id=deployment.id, url=public_url)
    replaced = _settle(ctx, prepared["repo"], commit, release_dir)
    return Outcome({"deployment_id": deployment.id, "url": public_url, "commit": commit, "replaced": replaced})


def _wait_for_checks(ctx: StageContext) -> Outcome | None:
    """The code host's checks (GitHub Actions) of exactly the commit to deploy. Polled with
    backoff (GitHub's rate-limit headers honoured) for at most GITHUB_CHECKS_WAIT_IN_STAGE in
    this attempt; still pending then, the stage gives its claim back and retries later, until
    GITHUB_CHECKS_TIMEOUT after the tests passed. A failure goes back to the Developer with its
    excerpt (within the cap); None: nothing to wait for, or every check passed."""
    prepared = ctx.output_of(Stage.PREPARER)
    host = get_host(prepared.get("host", "local"))
    commit = ctx.output_of(Stage.TESTER, iteration=ctx.run.iteration)["commit"]
    repo = host.repo(ctx.project)
    deadline = time.monotonic() + settings.GITHUB_CHECKS_WAIT_IN_STAGE
    polls = 0
    while True:
        checks = host.checks(ctx.project, repo, sha=commit, polls=polls)
        if checks.state in ("none", "success"):
            return None
        if checks.state == "failure":
            break
        tested = (
            StageRun.objects.filter(run=ctx.run, stage=Stage.TESTER, iteration=ctx.run.iteration)
            .values_list("finished_at", flat=True)
            .first()
        )
        if tested and (timezone.now() - tested).total_seconds() > settings.GITHUB_CHECKS_TIMEOUT:
            raise StageFailed(
                f"GitHub's checks of {commit[:12]} did not finish within {settings.GITHUB_CHECKS_TIMEOUT}s.",
                code="checks_timeout",
            )
        if time.monotonic() + checks.retry_in > deadline:
            raise StageWait(
                f"Waiting for GitHub's checks of {commit[:12]}: {checks.detail}.",
                code="checks_pending",
                extra={"retry_after": checks.retry_in},
            )
        time.sleep(checks.retry_in)  # bounded by GITHUB_CHECKS_WAIT_IN_STAGE; the heartbeat runs
        polls += 1
    report = TestReport(errors=1, failing=[FailingTest(name="ci: GitHub checks", message=checks.detail[-2000:])])
    output = {"commit": commit, "report": report.model_dump(), "checks_iteration": ctx.run.iteration}
    if ctx.run.iteration < ctx.run.max_iterations:
        return Outcome(output, Next.LOOP)
    raise StageFailed(
        f"GitHub's checks of {commit[:12]} failed: {checks.detail[:500]}", code="checks_failed", output=output
    )


def _public_url(slug: str) -> str | None:
    """The name people get when releases are behind Caddy (BASE_DOMAIN set), else None."""
    if caddy.get_router() is None:
        return None
    return f"{'https' if settings.CADDY_HTTPS else 'http'}://{caddy.host_for(slug)}/"


def _values(ctx: StageContext, spec: ProjectSpec) -> tuple[environment.ReleaseBot | None, str, Deployment, dict]:
    """The bot, the URL, the run's deployment row and the release's environment; values a person
    must give (secrets, a bot token) make the run wait for them."""
    try:
        bot = environment.project_bot(ctx.project) if spec.kind == "telegram_bot" else None
    except environment.ValuesMissing as exc:
        raise StageFailed(
            "The bot needs a Telegram bot token.", code="bot_token_needed", output={"reason": exc.bot_reason}
        ) from None
    commit = ctx.output_of(Stage.TESTER, iteration=ctx.run.iteration)["commit"]
    deployment = deployments.deployment_allocate(project_id=ctx.project.id, run_id=ctx.run.id, commit_sha=commit)
    url = _bot_url(bot.username) if bot else _public_url(ctx.project.slug) or _loopback_url(deployment.port)
    try:
        env = environment.release_env(ctx.project, spec, public_url=url, bot=bot)
    except environment.ValuesMissing as exc:
        names = ", ".join(exc.missing)
        raise StageFailed(
            f"These secrets must be provided before the release can start: {names}.",
            code="secrets_missing",
            output={"missing": exc.missing},
        ) from None
    return bot, url, deployment, env


def _loopback_url(port: int) -> str:
    return f"http://{settings.DEPLOY_HOST}:{port}/"


def _bot_url(username: str) -> str:
    return f"https://t.me/{username}"


def _deploy_bot(
    ctx: StageContext,
    spec: ProjectSpec,
    deployment: Deployment,
    release_dir: Path,
    env: dict[str, str],
    bot: environment.ReleaseBot,
    commit: str,
    repo: str,
) -> Outcome:
    """A bot goes live in two steps. First a rehearsal: the release runs against the factory's
    loopback Bot API stand-in with a throwaway token and must answer every conversation check,
    while the previous release keeps serving. Then the hand-over: Telegram allows one poller per
    token, so the previous release stops, the new one starts with the real token and must report
    a successful getUpdates in time; if it does not, it is stopped and the previous one is
    started again (rollback), and the person is told."""
    start_spec = local.read_start_spec(release_dir)
    target = targets.target_for(deployment)
    health_url = f"http://{settings.DEPLOY_HOST}:{deployment.port}/"
    release = str(deployment.id)
    problems: list[str] = []
    standin = StandIn().start()
    pid = None
    try:
        throwaway = standin.add_bot(username=f"{spec.slug.replace('-', '_')[:20]}_check_bot")
        rehearsal_env = {**env, "TELEGRAM_BOT_TOKEN": throwaway, "TELEGRAM_API_URL": standin.base_url}
        pid = _start(deployment, release_dir, rehearsal_env)
        polling = botcheck.wait_polling(
            pid=pid,
            url=health_url,
            path=start_spec.health,
            release=release,
            timeout=settings.DEPLOY_HEALTH_TIMEOUT,
            alive=_alive(target, deployment.id, pid),
        )
        problems = [] if polling.ok else [f"rehearsal: {polling.detail}"]
        rehearsed: list[str] = []
        if polling.ok:
            results = botcheck.converse(standin, throwaway, spec.conversation, timeout=settings.DEPLOY_HEALTH_TIMEOUT)
            problems = [f"conversation: {r.detail}" for r in results if not r.ok]
            rehearsed = [r.detail for r in results]
    finally:
        tail = target.log_tail(deployment_id=deployment.id, release_dir=release_dir) if pid else ""
        if pid:
            target.stop(deployment_id=deployment.id, pid=pid)
        standin.stop()
    if problems:
        return _failed(ctx, deployment.id, tail, problems, commit)
    # The token must still work (getMe) before the serving release is disturbed.
    try:
        transport.bot_get_me(bot.token)
    except PermanentError as exc:
        bots.bot_refused(project_id=ctx.project.id, error=exc.message)
        raise StageFailed(
            f"Telegram refused the bot's token ({exc.message}).", code="bot_token_needed", output={"reason": "refused"}
        ) from None
    previous = list(
        Deployment.objects.filter(project_id=ctx.project.id, status=Deployment.Status.LIVE).exclude(id=deployment.id)
    )
    for old in previous:
        targets.target_for(old).stop(deployment_id=old.id, pid=old.pid)
    live_env = {**env, "TELEGRAM_API_URL": settings.BOTS_API_URL}
    since = timezone.now()
    pid = _start(deployment, release_dir, live_env)
    polling = botcheck.wait_polling(
        pid=pid,
        url=health_url,
        path=start_spec.health,
        release=release,
        timeout=settings.BOT_POLL_TIMEOUT,
        since=since,
        alive=_alive(target, deployment.id, pid),
    )
    if not polling.ok:
        target.stop(deployment_id=deployment.id, pid=pid)
        restored = []
        for old in previous:
            try:
                old_pid = targets.target_for(old).start(
                    deployment_id=old.id,
                    project_slug=ctx.project.slug,
                    release_dir=Path(old.release_dir),
                    port=old.port,
                    host=settings.DEPLOY_HOST,
                    env=live_env,
                )
            except local.ReleaseError as exc:
                log.warning("bot_rollback_failed", deployment_id=old.id, error=str(exc))
                continue
            deployments.deployment_started(deployment_id=old.id, pid=old_pid, release_dir=old.release_dir)
            restored.append(old.id)
        if previous:
            deployments.deployment_rolled_back(
                run_id=ctx.run.id, failed_id=deployment.id, restored=restored, reason=polling.detail
            )
        # The rehearsal passed, so this is not the code's fault: the token, another program
        # polling the bot, or Telegram itself. A person decides (retry, or another token).
        deployments.deployment_fail(deployment_id=deployment.id, error=f"with the real token: {polling.detail}")
        raise StageFailed(
            f"The bot passed its checks but could not poll Telegram with its token ({polling.detail}). "
            + ("The previous release serves again. " if previous else "")
            + "If another program uses this bot, stop it; then reply to try again, or send /token to use another bot.",
            code="bot_not_polling",
            output={"deployment_id": deployment.id, "restored": [d.id for d in previous]},
        )
    url = _bot_url(bot.username)
    deployments.deployment_go_live(deployment_id=deployment.id, url=url)
    replaced = _settle(ctx, repo, commit, release_dir)
    return Outcome(
        {
            "deployment_id": deployment.id,
            "url": url,
            "bot": bot.username,
            "commit": commit,
            "replaced": replaced,
            "rehearsal": rehearsed,
        }
    )


def _start(deployment: Deployment, release_dir: Path, env: dict[str, str]) -> int:
    try:
        pid = targets.target_for(deployment).start(
            deployment_id=deployment.id,
            project_slug=deployment.project.slug,
            release_dir=release_dir,
            port=deployment.port,
            host=settings.DEPLOY_HOST,
            env=env,
        )
    except local.ReleaseError as exc:
        deployments.deployment_fail(deployment_id=deployment.id, error=str(exc))
        raise StageFailed(str(exc), code="deploy_failed") from exc
    deployments.deployment_started(deployment_id=deployment.id, pid=pid, release_dir=str(release_dir))
    return pid


def _failed(ctx: StageContext, deployment_id: int, log_tail: str, problems: list[str], commit: str) -> Outcome:
    """The new release failed its checks (it is already stopped): record it, and send the failure
    back to the Developer like a failing test, within the cap; at the cap, ask a person."""
    tail = redaction.redact(log_tail)
    deployments.deployment_fail(deployment_id=deployment_id, error="; ".join(problems) + "\n" + tail)
    message = (
        "The new release failed its checks and was stopped; the previous release (if any) still "
        "serves: " + "; ".join(problems)
    )
    report = TestReport(
        errors=1,
        failing=[
            FailingTest(
                name="deploy: health and acceptance checks", message=("; ".join(problems) + "\n" + tail)[-2000:]
            )
        ],
    )
    output = {"commit": commit, "deployment_id": deployment_id, "report": report.model_dump()}
    if ctx.run.iteration < ctx.run.max_iterations:
        return Outcome(output, Next.LOOP)
    raise StageFailed(message, code="deploy_unhealthy", output=output)


def _settle(ctx: StageContext, repo: str, commit: str, release_dir: Path) -> list[int]:
    """After going live: stop the releases the live one replaced, and make the deployed commit
    the project's main line (the base of its next run). Both are safe to repeat, so a rerun
    finishes what a crash between going live and here left undone."""
    replaced = []
    for old in Deployment.objects.filter(project_id=ctx.project.id, status=Deployment.Status.STOPPING):
        targets.target_for(old).stop(deployment_id=old.id, pid=old.pid)
        deployments.deployment_stopped(deployment_id=old.id)
        replaced.append(old.id)
    prepared = ctx.output_of(Stage.PREPARER)
    host = get_host(prepared.get("host", "local"))
    host.land(ctx.project, host.repo(ctx.project), branch=prepared["branch"], sha=commit)
    _prune(ctx.project.id, ctx.project.slug)
    return replaced


def _prune(project_id: int, slug: str) -> None:
    """Keep what the target built for the releases that hold a port and the RELEASES_KEPT
    earlier ones that served (rollbacks); remove the rest. Never fails a deploy."""
    rows = Deployment.objects.filter(project_id=project_id)
    keep = set(rows.filter(status__in=Deployment.HOLDS_PORT).values_list("id", flat=True))
    keep |= set(
        rows.filter(live_at__isnull=False).order_by("-id").values_list("id", flat=True)[: settings.RELEASES_KEPT + 1]
    )
    for name in set(rows.values_list("target", flat=True)):
        try:
            targets.get_target(name).prune(project_slug=slug, keep=keep)
        except (TransientError, PermanentError, local.ReleaseError) as exc:
            log.warning("release_prune_failed", project_id=project_id, target=name, error=str(exc)[:300])
