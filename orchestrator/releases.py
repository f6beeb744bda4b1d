"""Live releases, watched and repaired (beat), and rolled back by hand.

`releases_probe` looks at every live release: its process, its health endpoint answering for
this very release, and for a bot that it is polling Telegram. A release that is down opens an
Incident and gets a repair: restart it in place (same port, same environment) up to
`RELEASE_RESTART_LIMIT` times with backoff; then roll back to the previous healthy release
(started again from its kept release directory: seconds, no rebuild) on the same port, so its
name and route do not change; then give up and leave it to a person. Each step is recorded.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog
from celery import current_app
from django.conf import settings
from django.db import IntegrityError, transaction

from agents import services as agent_services
from config import task_names as names
from config.errors import Conflict, NotFound, PermanentError, TransientError
from orchestrator.deploy import botcheck, caddy, environment, local, targets
from orchestrator.telegram import transport
from projects import deployments, incidents
from projects import services as project_services
from projects.models import Deployment, Incident, IncidentEvent, Project
from projects.specs import ProjectSpec
from secrets_meta import bots as pool
from secrets_meta.models import BotToken

log = structlog.get_logger(__name__)
Type = IncidentEvent.Type


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str
    ms: int


def _internal(deployment: Deployment) -> str:
    return f"http://{settings.DEPLOY_HOST}:{deployment.port}/"


_READ = object()


def probe(deployment: Deployment, *, bot_token: str | None | object = _READ) -> Probe:
    """One quick look at a live release (no waiting): alive, healthy, and for a bot, polling
    and its token accepted by Telegram (``bot_token`` given: no database read, so the sweep can
    look at many releases at once from threads)."""
    started = time.monotonic()

    def done(ok: bool, detail: str) -> Probe:
        return Probe(ok, detail, int((time.monotonic() - started) * 1000))

    if not deployment.pid or not targets.target_for(deployment).alive(deployment_id=deployment.id, pid=deployment.pid):
        return done(False, "the release's process is gone")
    path = local.health_path(deployment.release_dir)
    status, body = local.http(_internal(deployment) + path.lstrip("/"), timeout=settings.RELEASE_PROBE_TIMEOUT)
    if status != 200:
        return done(False, f"{path} answered {status or 'nothing'}")
    answer = local.json_or_empty(body)
    if str(answer.get("release")) != str(deployment.id):
        return done(False, f"{path} answered for release {answer.get('release')!r}")
    if deployment.project.kind == "telegram_bot":
        if not answer.get("polling"):
            return done(False, "the bot is not polling Telegram")
        refused = _bot_refused(_assigned_token(deployment.project_id) if bot_token is _READ else bot_token)
        if refused:
            return done(False, refused)
    return done(True, "healthy")


def _assigned_token(project_id: int) -> str | None:
    row = BotToken.objects.filter(project_id=project_id, status=BotToken.Status.ASSIGNED).first()
    return pool.bot_token_value(row) if row is not None else None


def _bot_refused(token: str | None) -> str:
    """Telegram's word on the project's bot (getMe): why it refuses it, or "" when it answers (or
    cannot be reached now: that is not the release's fault, and the release's own polling says
    more)."""
    if token is None:
        return "the project has no bot token"
    try:
        transport.bot_get_me(token)
    except PermanentError as exc:
        return f"Telegram refuses the bot's token ({exc.message})"
    except TransientError:
        return ""
    return ""


def _look(deployment: Deployment, bot_token: str | None) -> tuple[Probe, targets.ReleaseUsage | None]:
    """Probe one release and, when it is healthy, sample its CPU and memory (no database)."""
    result = probe(deployment, bot_token=bot_token)
    usage = None
    if result.ok:
        try:
            usage = release_usage(deployment)
        except (TransientError, PermanentError, OSError) as exc:
            log.warning("release_usage_unknown", deployment_id=deployment.id, error=str(exc)[:300])
    return result, usage


def releases_probe() -> dict[str, int]:
    """Probe every live release; open an incident (and start its repair) for each one down.

    The releases are looked at all at once (threads: each look waits on a health answer and a
    CPU sample, a fraction of a second to a second on Docker), then the results are written here.
    A release the factory gave up on stays down without a new incident every sweep: its person
    was asked, and a retry, a redeploy or a rollback ends it. A release found down while a
    Deployer of its project holds the deploy lock is left to that Deployer."""
    counts = {"probed": 0, "down": 0, "opened": 0, "given_up": 0, "deploying": 0}
    live = list(
        Deployment.objects.filter(status=Deployment.Status.LIVE, project__deleted_at__isnull=True).select_related(
            "project"
        )
    )
    if not live:
        return counts
    tokens = {d.project_id: _assigned_token(d.project_id) for d in live if d.project.kind == "telegram_bot"}
    with ThreadPoolExecutor(max_workers=min(settings.RELEASE_PROBE_THREADS, len(live))) as pool_:
        looks = list(pool_.map(lambda d: _look(d, tokens.get(d.project_id)), live))
    for deployment, (result, usage) in zip(live, looks, strict=True):
        counts["probed"] += 1
        deployments.deployment_probed(deployment_id=deployment.id, ok=result.ok, ms=result.ms, detail=result.detail)
        project_services.deployment_set_usage(
            deployment_id=deployment.id,
            cpu_percent=usage.cpu_percent if usage else None,
            memory_bytes=usage.memory_bytes if usage else None,
        )
        if result.ok:
            # Back before any repair began (e.g. a slow moment): close it as recovered.
            waiting = Incident.objects.filter(project_id=deployment.project_id, status=Incident.Status.DETECTED).first()
            if waiting is not None:
                incidents.incident_resolve(
                    incident_id=waiting.id, serving_id=deployment.id, type=Type.RECOVERED, detail=""
                )
            continue
        counts["down"] += 1
        if deployments.deploy_lock_held(project_id=deployment.project_id):
            # A Deployer of the project is at work (a bot's hand-over stops the old release
            # before the new one polls): repairing the old one now would fight it.
            counts["deploying"] += 1
            continue
        last = Incident.objects.filter(deployment_id=deployment.id).order_by("-id").first()
        if last is not None and last.status == Incident.Status.FAILED:
            counts["given_up"] += 1
            continue
        if release_down(deployment, result.detail):
            counts["opened"] += 1
    return counts


def release_down(deployment: Deployment, detail: str) -> bool:
    """A live release is down: open its incident (once per outage) and start its repair.
    True when this opened the incident."""
    with transaction.atomic():
        incident, created = incidents.incident_open(deployment_id=deployment.id, reason=detail)
        if created:
            _enqueue_repair(incident.id)
    log.warning("release_down", deployment_id=deployment.id, project_id=deployment.project_id, why=detail)
    return created


def release_usage(deployment: Deployment) -> targets.ReleaseUsage | None:
    """CPU (percent of one core) and memory of a release, from the target that runs it; None
    when it does not run."""
    return targets.target_for(deployment).usage(deployment_id=deployment.id, pid=deployment.pid)


def _enqueue_repair(incident_id: int, countdown: float = 0) -> None:
    transaction.on_commit(
        lambda: current_app.send_task(names.RELEASES_REPAIR, kwargs={"incident_id": incident_id}, countdown=countdown)
    )


def _start(deployment: Deployment, release_dir: Path) -> tuple[int | None, str]:
    """Start a kept release on its port with its environment; (pid, "") or (None, why not)."""
    project = deployment.project
    spec = ProjectSpec.model_validate(project.spec)
    try:
        bot = environment.project_bot(project) if spec.kind == "telegram_bot" else None
        env = environment.release_env(project, spec, public_url=deployment.url, bot=bot)
    except environment.ValuesMissing as exc:
        return None, str(exc)
    if bot is not None:
        env["TELEGRAM_API_URL"] = settings.BOTS_API_URL
    target = targets.target_for(deployment)
    try:
        pid = target.start(
            deployment_id=deployment.id,
            project_slug=project.slug,
            release_dir=release_dir,
            port=deployment.port,
            host=settings.DEPLOY_HOST,
            env=env,
        )
    except local.ReleaseError as exc:
        return None, str(exc)
    path = local.health_path(release_dir)
    alive = lambda: target.alive(deployment_id=deployment.id, pid=pid)  # noqa: E731
    if spec.kind == "telegram_bot":
        check = botcheck.wait_polling(
            pid=pid,
            url=_internal(deployment),
            path=path,
            release=str(deployment.id),
            timeout=settings.BOT_POLL_TIMEOUT,
            alive=alive,
        )
    else:
        check = local.wait_healthy(
            pid=pid,
            url=_internal(deployment),
            path=path,
            release=str(deployment.id),
            timeout=settings.DEPLOY_HEALTH_TIMEOUT,
            alive=alive,
        )
    if not check.ok:
        target.stop(deployment_id=deployment.id, pid=pid)
        return None, check.detail
    return pid, ""


def release_repair(*, incident_id: int) -> float | None:
    """One repair step of an open incident; the countdown to the next step, or None when over."""
    incident = Incident.objects.select_related("deployment__project").filter(id=incident_id).first()
    if incident is None or incident.status not in Incident.OPEN:
        return None
    failing = incident.deployment
    if failing.status != Deployment.Status.LIVE:
        # A new deploy replaced it meanwhile: whatever is live now serves.
        current = Deployment.objects.filter(project_id=failing.project_id, status=Deployment.Status.LIVE).first()
        if current is not None:
            incidents.incident_resolve(
                incident_id=incident.id, serving_id=current.id, type=Type.RECOVERED, detail="a new release is live"
            )
        else:
            _give_up(incident_id=incident.id, detail="the release is no longer live")
        return None
    if deployments.deploy_lock_held(project_id=failing.project_id):
        return settings.RELEASE_RESTART_BACKOFF_SECONDS  # a deploy is under way: it may replace this release
    if incident.restarts < settings.RELEASE_RESTART_LIMIT:
        incidents.incident_step(
            incident_id=incident.id, type=Type.RESTARTING, detail=f"restart {incident.restarts + 1}", restarted=True
        )
        targets.target_for(failing).stop(deployment_id=failing.id, pid=failing.pid)
        pid, why = _start(failing, Path(failing.release_dir))
        if pid is not None:
            deployments.deployment_restarted(deployment_id=failing.id, pid=pid)
            incidents.incident_resolve(incident_id=incident.id, serving_id=failing.id, type=Type.RESTARTED)
            return None
        incidents.incident_step(incident_id=incident.id, type=Type.RESTART_FAILED, detail=why)
        return settings.RELEASE_RESTART_BACKOFF_SECONDS * (2**incident.restarts)
    return _roll_back(incident, failing)


def _give_up(*, incident_id: int, detail: str) -> None:
    """Stop trying, and ask the owner what to do (retry or leave it down) in one message; when
    the run already has an open question, only tell them."""
    if not incidents.incident_give_up(incident_id=incident_id, detail=detail, tell=False):
        return
    if agent_services.escalation_release_down(incident_id=incident_id, detail=detail) is None:
        incidents.incident_tell_given_up(incident_id=incident_id, detail=detail)


def _previous_healthy(failing: Deployment) -> Deployment | None:
    """The most recent earlier release that served and was replaced normally, still on disk."""
    for candidate in Deployment.objects.filter(
        project_id=failing.project_id, status=Deployment.Status.STOPPED, id__lt=failing.id, live_at__isnull=False
    ).order_by("-id")[: settings.RELEASES_KEPT]:
        if candidate.release_dir and Path(candidate.release_dir).is_dir():
            return candidate
    return None


def _roll_back(incident: Incident, failing: Deployment) -> None:
    previous = _previous_healthy(failing)
    if previous is None:
        _give_up(
            incident_id=incident.id, detail=f"restarted {incident.restarts} times; no earlier release to roll back to"
        )
        return None
    incidents.incident_step(incident_id=incident.id, type=Type.ROLLING_BACK, detail=f"to release {previous.id}")
    targets.target_for(failing).stop(deployment_id=failing.id, pid=failing.pid)
    restored = deployments.deployment_reactivate(failing_id=failing.id, previous_id=previous.id)
    restored = Deployment.objects.select_related("project").get(id=restored.id)
    pid, why = _start(restored, Path(restored.release_dir))
    if pid is None:
        incidents.incident_step(incident_id=incident.id, type=Type.ROLLBACK_FAILED, detail=why)
        deployments.deployment_fail(deployment_id=restored.id, error=f"rollback failed: {why}")
        _give_up(incident_id=incident.id, detail=f"the rollback to release {previous.id} failed")
        return None
    deployments.deployment_restored(deployment_id=restored.id, pid=pid)
    incidents.incident_resolve(
        incident_id=incident.id, serving_id=restored.id, type=Type.ROLLED_BACK, detail=f"release {restored.id}"
    )
    return None


def rollback_by_hand(*, project: Project, to_deployment_id: int | None = None) -> Deployment:
    """A person rolls back their live project to an earlier kept release (default: the one
    before). The live release is stopped and the earlier one serves on the same port."""
    live = Deployment.objects.select_related("project").filter(project=project, status=Deployment.Status.LIVE).first()
    if live is None:
        raise Conflict("The project has no live release to roll back.", code="not_live")
    if to_deployment_id is None:
        target = _previous_healthy(live)
        if target is None:
            raise Conflict("There is no earlier release kept to roll back to.", code="no_previous_release")
    else:
        target = Deployment.objects.filter(
            project=project, id=to_deployment_id, status=Deployment.Status.STOPPED, live_at__isnull=False
        ).first()
        if target is None or not (target.release_dir and Path(target.release_dir).is_dir()):
            raise NotFound(
                f"Release {to_deployment_id} is not an earlier live release of this project that is still kept.",
                code="release_not_found",
            )
    targets.target_for(live).stop(deployment_id=live.id, pid=live.pid)
    restored = deployments.deployment_reactivate(failing_id=live.id, previous_id=target.id, by_hand=True)
    restored = Deployment.objects.select_related("project").get(id=restored.id)
    pid, why = _start(restored, Path(restored.release_dir))
    if pid is None:
        # The earlier release does not start: the one that served before serves again.
        back = deployments.deployment_reactivate(failing_id=restored.id, previous_id=live.id)
        back = Deployment.objects.select_related("project").get(id=back.id)
        again, _ = _start(back, Path(back.release_dir))
        if again is not None:
            deployments.deployment_restored(deployment_id=back.id, pid=again)
        raise Conflict(f"The rollback to release {target.id} failed: {why}", code="rollback_failed")
    deployments.deployment_restored(deployment_id=restored.id, pid=pid)
    return Deployment.objects.get(id=restored.id)


# --- stop and start by hand -----------------------------------------------------------------------
def project_stop(*, project: Project) -> list[int]:
    """Stop the project's releases and remove its route; the project, its bot and its kept
    releases stay (``project_start`` serves the last one again). Safe to repeat: the ids stopped."""
    stopped = []
    for deployment in Deployment.objects.filter(project=project, status__in=Deployment.HOLDS_PORT):
        targets.target_for(deployment).stop(deployment_id=deployment.id, pid=deployment.pid)
        deployments.deployment_stopped(deployment_id=deployment.id)
        stopped.append(deployment.id)
    router = caddy.get_router()
    if router is not None and project.slug:
        router.delete_route(project.slug)
    incidents.incidents_close(project_id=project.id, detail="the project was stopped")
    log.info("project_stopped", project_id=project.id, releases=stopped)
    return stopped


def project_start(*, project: Project) -> Deployment:
    """Start the project's last release that served (kept on disk) again, on a free port, and
    route the project's name to it. 409 ``already_live``, ``no_release``, ``start_failed``."""
    if Deployment.objects.filter(project=project, status=Deployment.Status.LIVE).exists():
        raise Conflict("The project is already live.", code="already_live")
    last = (
        Deployment.objects.filter(project=project, status=Deployment.Status.STOPPED, live_at__isnull=False)
        .order_by("-live_at", "-id")
        .first()
    )
    if last is None or not (last.release_dir and Path(last.release_dir).is_dir()):
        raise Conflict("The project has no kept release to start.", code="no_release")
    restarting = deployments_reopen(last)
    pid, why = _start(restarting, Path(restarting.release_dir))
    if pid is None:
        deployments.deployment_stopped(deployment_id=restarting.id)
        raise Conflict(f"Release {restarting.id} did not start again: {why}", code="start_failed")
    deployments.deployment_restored(deployment_id=restarting.id, pid=pid)
    router = caddy.get_router()
    if router is not None and project.kind == Project.Kind.WEB_SERVICE:
        upstream = f"{settings.DEPLOY_HOST}:{restarting.port}"
        router.set_route(caddy.Route(slug=project.slug, host=caddy.host_for(project.slug), upstream=upstream))
    return Deployment.objects.get(id=restarting.id)


def deployments_reopen(deployment: Deployment) -> Deployment:
    """A stopped release made ``starting`` again: on its old port when free, else on a new one (its
    loopback URL follows; a name behind Caddy does not change)."""
    old_port = deployment.port
    for port in [old_port, *range(settings.DEPLOY_PORT_MIN, settings.DEPLOY_PORT_MAX + 1)]:
        if port != old_port and not deployments._port_bindable(port):
            continue
        url = deployment.url
        if url == f"http://{settings.DEPLOY_HOST}:{old_port}/":
            url = f"http://{settings.DEPLOY_HOST}:{port}/"
        try:
            with transaction.atomic():
                Deployment.objects.filter(id=deployment.id).update(
                    status=Deployment.Status.STARTING, port=port, url=url, pid=None, stopped_at=None
                )
        except IntegrityError:
            continue  # the port (or a starting row of its run) is taken: the next one
        return Deployment.objects.select_related("project").get(id=deployment.id)
    raise Conflict("Every deploy port is in use.", code="no_free_port")
