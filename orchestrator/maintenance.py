"""Clean-up the engine does on schedule (beat) or on request: the worker lifecycle sweeps, and
releases reconciled with the database (adopted when a node starts, swept by beat)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from agents import services as agent_services
from agents.models import AgentConfig, WorkerSession
from config.errors import PermanentError, TransientError
from orchestrator import bots, releases, workers
from orchestrator.deploy import caddy, local, targets
from orchestrator.runtime import WorkerGone, get_runtime
from projects import deployments, selectors
from projects.models import Deployment, PipelineRun, Project
from secrets_meta.models import BotToken

log = structlog.get_logger(__name__)
State = WorkerSession.State
# A session may sit in "starting" without a container this long before it counts as failed.
STARTING_GRACE = timedelta(minutes=5)


def routes_sync() -> int:
    """Make Caddy's routes match the live web releases; how many routes were changed."""
    router = caddy.get_router()
    if router is None:
        return 0
    desired = [
        caddy.Route(slug=slug, host=caddy.host_for(slug), upstream=f"{settings.DEPLOY_HOST}:{port}")
        for slug, port in selectors.live_routes()
    ]
    changes = router.sync(desired)
    if changes["set"] or changes["removed"]:
        log.info("routes_synced", set=changes["set"], removed=changes["removed"])
    return len(changes["set"]) + len(changes["removed"])


def project_teardown(*, project_id: int) -> int:
    """Stop every release of a project that holds a port, remove its route, and terminate its
    workers."""
    stopped = 0
    for deployment in Deployment.objects.filter(project_id=project_id, status__in=Deployment.HOLDS_PORT):
        targets.target_for(deployment).stop(deployment_id=deployment.id, pid=deployment.pid)
        deployments.deployment_stopped(deployment_id=deployment.id)
        stopped += 1
    # A bot project's bot goes back to the pool (webhook deleted, commands cleared); a person's
    # own bot is forgotten.
    bots.bot_release(project_id)
    router = caddy.get_router()
    slug = Project.objects.filter(id=project_id).values_list("slug", flat=True).first()
    if router is not None and slug:
        router.delete_route(slug)
    workers.sessions_terminate_for_project(project_id=project_id, reason="project torn down")
    log.info("project_torn_down", project_id=project_id, releases=stopped)
    return stopped


@dataclass
class ReleasesReport:
    stopped: list[int] = field(default_factory=list)  # "stopping" rows finished
    orphans: list[int] = field(default_factory=list)  # running releases no live/starting row accounts for
    down: list[int] = field(default_factory=list)  # live rows whose release does not run (incident opened)
    torn_down: list[int] = field(default_factory=list)  # deleted projects whose teardown had not finished

    def total(self) -> int:
        return len(self.stopped) + len(self.orphans) + len(self.down) + len(self.torn_down)


def _deploy_targets() -> set[str]:
    """Every target this installation may have releases on: the setting and any a row names."""
    names = {settings.DEPLOY_TARGET}
    names |= set(Deployment.objects.filter(status__in=Deployment.HOLDS_PORT).values_list("target", flat=True))
    return names


def releases_reconcile(*, adopt: bool = False) -> ReleasesReport:
    """Make what runs on the deploy targets match the Deployment rows.

    - A row left ``stopping`` (a Deployer killed while stopping what it replaced) is stopped by
      its marker or label (SIGTERM, then SIGKILL) and marked stopped, unless a live Deployer of
      the project is at it (it holds the project's deploy lock).
    - A running release whose row is neither live nor starting (or that has no row) is stopped.
      Each target is listed *before* the rows are read, so a release started meanwhile (its row
      is starting before it starts) is never taken for an orphan.
    - With ``adopt`` (a node starting): a live row whose release does not run is down; its
      incident is opened and its repair restarts it (the probe would find it within a sweep).
    """
    report = ReleasesReport()
    # A deletion killed between marking the project deleted and tearing it down (the API and
    # admin do both in turn): the sweep finishes it, so a deleted project never keeps serving.
    unfinished = (
        Project.objects.filter(deleted_at__isnull=False)
        .filter(
            Q(deployments__status__in=Deployment.HOLDS_PORT)
            | Q(bot_tokens__status=BotToken.Status.ASSIGNED)
            | Q(worker_sessions__state__in=WorkerSession.LIVE)
        )
        .values_list("id", flat=True)
        .distinct()
    )
    for project_id in list(unfinished):
        project_teardown(project_id=project_id)
        report.torn_down.append(project_id)
    for name in _deploy_targets():
        try:
            target = targets.get_target(name)
            found = target.list_releases()
        except (TransientError, PermanentError) as exc:
            log.warning("deploy_target_unreachable", target=name, error=str(exc))
            continue
        ids = {r.deployment_id for r in found}
        rows = dict(Deployment.objects.filter(id__in=ids).values_list("id", "status"))
        for deployment_id in sorted(ids):
            if rows.get(deployment_id) in (
                Deployment.Status.LIVE,
                Deployment.Status.STARTING,
                Deployment.Status.STOPPING,
            ):
                continue  # stopping rows are finished below, with their lock checked
            target.stop(deployment_id=deployment_id, pid=None)
            report.orphans.append(deployment_id)
    for deployment in Deployment.objects.filter(status=Deployment.Status.STOPPING).select_related("project"):
        if deployments.deploy_lock_held(project_id=deployment.project_id):
            continue  # its Deployer is stopping it right now
        try:
            targets.target_for(deployment).stop(deployment_id=deployment.id, pid=deployment.pid)
        except (TransientError, PermanentError, local.ReleaseError) as exc:
            log.warning("release_stop_failed", deployment_id=deployment.id, error=str(exc))
            continue
        deployments.deployment_stopped(deployment_id=deployment.id)
        report.stopped.append(deployment.id)
    if adopt:
        for deployment in Deployment.objects.filter(status=Deployment.Status.LIVE).select_related("project"):
            try:
                running = targets.target_for(deployment).alive(deployment_id=deployment.id, pid=deployment.pid)
            except (TransientError, PermanentError) as exc:
                log.warning("deploy_target_unreachable", target=deployment.target, error=str(exc))
                continue
            if not running:
                releases.release_down(deployment, "the release was not running when the factory started")
                report.down.append(deployment.id)
    if report.total():
        log.info(
            "releases_reconciled",
            stopped=report.stopped,
            orphans=report.orphans,
            down=report.down,
            torn_down=report.torn_down,
            adopt=adopt,
        )
    return report


def _ttls() -> dict[str, AgentConfig]:
    configs = {c.role: c for c in AgentConfig.objects.all()}
    return configs


def _ttl(configs: dict[str, AgentConfig], role: str, name: str) -> int:
    config = configs.get(role)
    return getattr(config, name) if config else AgentConfig._meta.get_field(name).default


def workers_pause_idle() -> int:
    """Pause running workers nobody has used for their role's idle TTL."""
    configs, now = _ttls(), timezone.now()
    shortest = min([_ttl(configs, r, "idle_ttl_seconds") for r in ("architect", "developer", "tester")])
    paused = 0
    candidates = WorkerSession.objects.filter(
        state__in=[State.RUNNING, State.IDLE], last_activity_at__lt=now - timedelta(seconds=shortest)
    )
    for session in candidates:
        if session.last_activity_at >= now - timedelta(seconds=_ttl(configs, session.role, "idle_ttl_seconds")):
            continue
        workers.session_idle(session=session, reason="idle past its TTL")
        paused += 1
    return paused


@dataclass
class ReapReport:
    expired: list[int] = field(default_factory=list)  # paused past pause_ttl, or past max lifetime
    vanished: list[int] = field(default_factory=list)  # the database says live; the container is gone
    orphans: list[str] = field(default_factory=list)  # containers of ours with no live session

    def total(self) -> int:
        return len(self.expired) + len(self.vanished) + len(self.orphans)


def workers_reap() -> ReapReport:
    """Terminate expired workers, fail sessions whose worker vanished, remove orphan workers."""
    configs, now, report = _ttls(), timezone.now(), ReapReport()
    min_pause = min(_ttl(configs, r, "pause_ttl_seconds") for r in ("architect", "developer", "tester"))
    min_life = min(_ttl(configs, r, "max_lifetime_seconds") for r in ("architect", "developer", "tester"))
    expired = WorkerSession.objects.filter(
        Q(state=State.PAUSED, state_changed_at__lt=now - timedelta(seconds=min_pause))
        | Q(state__in=WorkerSession.LIVE, created_at__lt=now - timedelta(seconds=min_life))
    )
    for session in expired:
        if session.state == State.PAUSED and session.state_changed_at < now - timedelta(
            seconds=_ttl(configs, session.role, "pause_ttl_seconds")
        ):
            reason = "paused past pause_ttl"
        elif session.created_at < now - timedelta(seconds=_ttl(configs, session.role, "max_lifetime_seconds")):
            reason = "past max lifetime"
        else:
            continue
        workers.session_terminate(session=session, reason=reason)
        report.expired.append(session.id)

    for runtime_name in _configured_runtimes():
        _reconcile_runtime(runtime_name, report)
    if report.total():
        log.info("workers_reaped", expired=report.expired, vanished=report.vanished, orphans=report.orphans)
    return report


def _configured_runtimes() -> set[str]:
    """Every runtime this installation may have workers on: the default, each role's choice, and
    whatever a live session uses. Each is reconciled on every sweep, live sessions or not."""
    names = {settings.WORKER_RUNTIME, "process"}
    names |= set(AgentConfig.objects.exclude(runtime="").values_list("runtime", flat=True))
    names |= set(WorkerSession.objects.filter(state__in=WorkerSession.LIVE).values_list("runtime", flat=True))
    return names


def _listing(runtime_name: str):
    """(when it was listed, what runs) for a runtime, or None when it cannot be reached."""
    try:
        runtime = get_runtime(runtime_name)
        listed_at = timezone.now()
        return runtime, listed_at, runtime.list_workers()
    except (WorkerGone, TransientError, PermanentError) as exc:
        log.warning("runtime_unreachable", runtime=runtime_name, error=str(exc))
        return None


def _live_sessions() -> list[tuple]:
    return list(
        WorkerSession.objects.filter(state__in=WorkerSession.LIVE).values_list(
            "id", "runtime", "container_id", "owner_node", "created_at", "state_changed_at"
        )
    )


def _reconcile_runtime(runtime_name: str, report: ReapReport) -> None:
    """Compare what runs on a runtime with the live sessions recorded for it.

    The runtime is listed *before* the sessions are read: a worker created after the listing is
    not in it (so it cannot look like an orphan), and a session recorded or changed after the
    listing is not judged by it (so it cannot look vanished).
    """
    listing = _listing(runtime_name)
    if listing is None:
        return
    runtime, listed_at, found = listing
    live = _live_sessions()
    report.vanished += _fail_vanished(runtime_name, found, live, listed_at, reason="worker vanished")
    live_ids = {row[0] for row in live}
    for worker in found:
        if worker.session_id not in live_ids:
            runtime.terminate(worker.handle)
            report.orphans.append(worker.handle)


def workers_fail_vanished(*, reason: str = "worker vanished") -> list[int]:
    """Fail at once every live session whose worker no longer exists, by the runtime's probe.

    A Celery node runs this when it starts: the paused workers of a node that was killed died
    with it (the kernel sends SIGHUP to a stopped process group whose parent died), and the
    database must not call them paused until the next reap sweep.
    """
    vanished: list[int] = []
    for runtime_name in {row[1] for row in _live_sessions()}:
        listing = _listing(runtime_name)
        if listing is None:
            continue
        _, listed_at, found = listing
        vanished += _fail_vanished(runtime_name, found, _live_sessions(), listed_at, reason=reason)
    if vanished:
        log.info("workers_vanished", sessions=vanished, reason=reason)
    return vanished


def _fail_vanished(runtime_name: str, found: list, live: list[tuple], listed_at, *, reason: str) -> list[int]:
    """Fail the live sessions of this runtime whose worker is not among ``found``."""
    handles = {w.handle for w in found}
    local_only = runtime_name == "process"  # process groups are visible on their own machine only
    host = socket.gethostname()
    failed = []
    for session_id, name, handle, node, created, changed in live:
        if name != runtime_name or (local_only and node.rsplit("@", 1)[-1] != host):
            continue
        if (changed or created) >= listed_at:
            continue  # started (or changed) after the listing: judged by the next sweep
        if handle in handles or (not handle and created > listed_at - STARTING_GRACE):
            continue
        if agent_services.session_set_state(
            session_id=session_id, state=State.FAILED, reason=reason, expect=WorkerSession.LIVE
        ):
            failed.append(session_id)
    return failed


def workers_terminate_node(*, node: str) -> int:
    """A worker node is shutting down: end the sessions it owns."""
    sessions = list(WorkerSession.objects.filter(owner_node=node, state__in=WorkerSession.LIVE))
    for session in sessions:
        workers.session_terminate(session=session, reason=f"node {node} shut down")
    return len(sessions)


def escalations_expire() -> int:
    """Fail runs whose question expired unanswered, and end their workers."""
    run_ids = agent_services.escalations_expire()
    for project_id in set(PipelineRun.objects.filter(id__in=run_ids).values_list("project_id", flat=True)):
        workers.sessions_terminate_for_project(project_id=project_id, reason="question expired unanswered")
    return len(run_ids)
