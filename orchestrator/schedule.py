"""Every beat entry, in one place. django-celery-beat copies them into its tables at start-up,
where operators can change them in admin. Each entry expires at 1.5× its interval: a message
that waited that long is superseded by the next one, but a slightly late one still runs."""

from __future__ import annotations

from django.conf import settings

from config import task_names as names

EXPIRY_FACTOR = 1.5


def _every(task: str, seconds: float) -> dict:
    return {"task": task, "schedule": seconds, "options": {"expires": seconds * EXPIRY_FACTOR}}


def beat_schedule() -> dict:
    interval = settings.RECONCILE_INTERVAL_SECONDS
    sweep = settings.WORKER_SWEEP_INTERVAL_SECONDS
    return {
        # Re-enqueue runs whose stage lost its message or its worker (the DB is the truth).
        "reconcile-runs": _every(names.RECONCILE_RUNS, interval),
        # Pause running workers idle past their role's idle TTL (a paused worker costs no CPU).
        "workers-pause-idle": _every(names.WORKERS_PAUSE_IDLE, sweep),
        # Deliver again messages to people whose delivery task was lost.
        "notify-requeue-stale": _every(names.NOTIFY_REQUEUE_STALE, sweep),
        # Fail runs whose question to a person expired unanswered; end their workers.
        "escalations-expire": _every(names.ESCALATIONS_EXPIRE, sweep),
        # Terminate expired workers and workers of finished runs, fail sessions whose worker
        # vanished, remove orphan workers.
        "workers-reap": _every(names.WORKERS_REAP, sweep),
        # Probe every live release; one found down opens an incident and is repaired.
        "releases-probe": _every(names.RELEASES_PROBE, settings.RELEASE_PROBE_INTERVAL_SECONDS),
        # Finish releases left "stopping" by a killed Deployer; stop releases no row accounts for.
        "releases-reconcile": _every(names.RELEASES_RECONCILE, settings.RELEASES_RECONCILE_INTERVAL_SECONDS),
        # Re-apply the routes of live releases to Caddy (no-op without BASE_DOMAIN).
        "routes-sync": _every(names.ROUTES_SYNC, settings.ROUTES_SYNC_INTERVAL_SECONDS),
    }
