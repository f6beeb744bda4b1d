"""Releases of a project: ports, going live, stopping. The Deployer's record of what runs."""

from __future__ import annotations

import socket
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from config.errors import Conflict
from projects.events import event_record
from projects.models import DeployLock, Deployment, RunEvent, Stage, StageRun


def _port_bindable(port: int) -> bool:
    """Is the candidate port free on this host? (Something outside the factory may hold it.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((settings.DEPLOY_HOST, port))
        except OSError:
            return False
    return True


def _current(run_id: int) -> Deployment | None:
    """The run's release being started or live; a failed one is history (the next try is new)."""
    return (
        Deployment.objects.filter(run_id=run_id, status__in=[Deployment.Status.STARTING, Deployment.Status.LIVE])
        .order_by("-id")
        .first()
    )


def deployment_allocate(*, project_id: int, run_id: int, commit_sha: str) -> Deployment:
    """Create the run's next deployment with a free internal port, or return the one under way.

    The port is taken by inserting the row: a unique constraint over the ports of deployments
    that hold one makes two concurrent deploys unable to take the same port.
    """
    existing = _current(run_id)
    if existing is not None:
        return existing
    for _ in range(50):
        taken = set(Deployment.objects.filter(status__in=Deployment.HOLDS_PORT).values_list("port", flat=True))
        port = next(
            (
                p
                for p in range(settings.DEPLOY_PORT_MIN, settings.DEPLOY_PORT_MAX + 1)
                if p not in taken and _port_bindable(p)
            ),
            None,
        )
        if port is None:
            raise Conflict("Every deploy port is in use.", code="no_free_port")
        try:
            with transaction.atomic():
                return Deployment.objects.create(
                    project_id=project_id,
                    run_id=run_id,
                    port=port,
                    commit_sha=commit_sha,
                    target=settings.DEPLOY_TARGET,
                )
        except IntegrityError:
            existing = _current(run_id)
            if existing is not None:
                return existing
    raise Conflict("Could not allocate a deploy port; too many deploys at once.", code="no_free_port")


def deployment_started(*, deployment_id: int, pid: int, release_dir: str) -> None:
    Deployment.objects.filter(id=deployment_id).update(pid=pid, release_dir=release_dir)


@transaction.atomic
def deployment_go_live(*, deployment_id: int, url: str) -> list[Deployment]:
    """Make this release the project's live one; return the releases it replaces (to be stopped)."""
    new = Deployment.objects.select_for_update().get(id=deployment_id)
    previous = list(
        Deployment.objects.select_for_update()
        .filter(project_id=new.project_id, status=Deployment.Status.LIVE)
        .exclude(id=new.id)
    )
    Deployment.objects.filter(id__in=[d.id for d in previous]).update(status=Deployment.Status.STOPPING)
    Deployment.objects.filter(id=new.id).update(status=Deployment.Status.LIVE, url=url, live_at=timezone.now())
    event_record(
        run_id=new.run_id,
        type=RunEvent.Type.DEPLOYED,
        stage=Stage.DEPLOYER,
        payload={"deployment_id": new.id, "url": url, "replaces": [d.id for d in previous]},
    )
    return previous


def deployment_fail(*, deployment_id: int, error: str) -> None:
    Deployment.objects.filter(id=deployment_id).update(
        status=Deployment.Status.FAILED, error=error[:4000], stopped_at=timezone.now()
    )


def deployment_stopped(*, deployment_id: int) -> None:
    Deployment.objects.filter(id=deployment_id).update(status=Deployment.Status.STOPPED, stopped_at=timezone.now())


def deployment_rolled_back(*, run_id: int, failed_id: int, restored: list[int], reason: str) -> None:
    """A new release failed after the previous one was stopped (a bot: one poller per token) and
    the previous one was started again: say so, the person is told."""
    event_record(
        run_id=run_id,
        type=RunEvent.Type.ROLLED_BACK,
        stage=Stage.DEPLOYER,
        payload={"failed": failed_id, "restored": restored, "reason": reason[:500]},
    )


def deployment_probed(*, deployment_id: int, ok: bool, ms: int, detail: str) -> None:
    Deployment.objects.filter(id=deployment_id).update(
        probed_at=timezone.now(), probe_ok=ok, probe_ms=ms, probe_detail=detail[:300]
    )


def deployment_restarted(*, deployment_id: int, pid: int) -> None:
    Deployment.objects.filter(id=deployment_id).update(pid=pid, restarts=F("restarts") + 1)


@transaction.atomic
def deployment_reactivate(*, failing_id: int, previous_id: int, by_hand: bool = False) -> Deployment:
    """Roll back: the live release steps down (failed; stopped when a person rolled back a
    healthy one) and the previous one takes its place and its port (so its name and route stay
    as they were); it is `starting` until healthy."""
    failing = Deployment.objects.select_for_update().get(id=failing_id)
    Deployment.objects.filter(id=failing.id).update(
        status=Deployment.Status.STOPPED if by_hand else Deployment.Status.FAILED,
        stopped_at=timezone.now(),
        error="" if by_hand else "replaced by a rollback",
    )
    Deployment.objects.filter(id=previous_id).update(
        status=Deployment.Status.STARTING, port=failing.port, url=failing.url, pid=None, stopped_at=None
    )
    return Deployment.objects.get(id=previous_id)


def deployment_restored(*, deployment_id: int, pid: int) -> None:
    Deployment.objects.filter(id=deployment_id).update(status=Deployment.Status.LIVE, pid=pid, live_at=timezone.now())


# --- one deploy per project at a time -------------------------------------------------------
def _holder_alive(lock: DeployLock, now) -> bool:
    """The holding stage still runs: claimed, its heartbeat fresh, and the lock not expired."""
    if lock.expires_at <= now:
        return False
    return StageRun.objects.filter(
        id=lock.stage_run_id,
        status=StageRun.Status.RUNNING,
        heartbeat_at__gte=now - timedelta(seconds=settings.STAGE_STALE_SECONDS),
    ).exists()


@transaction.atomic
def deploy_lock_acquire(*, project_id: int, stage_run_id: int) -> int | None:
    """Take the project's deploy lock for this Deployer stage (again, if it holds it already).
    None when taken; else the run id of the live holder, and the caller waits."""
    now = timezone.now()
    expires = now + timedelta(seconds=settings.STAGE_TIME_LIMIT)
    lock, created = DeployLock.objects.select_for_update().get_or_create(
        project_id=project_id, defaults={"stage_run_id": stage_run_id, "acquired_at": now, "expires_at": expires}
    )
    if created:
        return None
    if lock.stage_run_id != stage_run_id and _holder_alive(lock, now):
        return StageRun.objects.filter(id=lock.stage_run_id).values_list("run_id", flat=True).first() or 0
    DeployLock.objects.filter(project_id=project_id).update(
        stage_run_id=stage_run_id, acquired_at=now, expires_at=expires
    )
    return None


def deploy_lock_release(*, project_id: int, stage_run_id: int) -> bool:
    """Give the lock back (only the holder's own release counts)."""
    deleted, _ = DeployLock.objects.filter(project_id=project_id, stage_run_id=stage_run_id).delete()
    return bool(deleted)


def deploy_lock_held(*, project_id: int) -> bool:
    """Is a deploy of this project under way (a live holder)?"""
    lock = DeployLock.objects.filter(project_id=project_id).first()
    return lock is not None and _holder_alive(lock, timezone.now())
