"""Every beat entry, in one place. django-celery-beat copies them into its tables at start-up,
where operators can change them in admin."""
from __future__ import annotations

from django.conf import settings


def beat_schedule() -> dict:
    interval = settings.RECONCILE_INTERVAL_SECONDS
    sweep = settings.WORKER_SWEEP_INTERVAL_SECONDS
    return {
        # Re-enqueue runs whose stage lost its message or its worker (the DB is the truth).
        "reconcile-runs": {
            "task": "maintenance.reconcile_runs",
            "schedule": interval,
            "options": {"expires": interval},
        },
        # Pause running workers idle past their role's idle TTL (a paused worker costs no CPU).
        "workers-pause-idle": {
            "task": "workers.pause_idle",
            "schedule": sweep,
            "options": {"expires": sweep},
        },
        # Deliver again messages to people whose delivery task was lost.
        "notify-requeue-stale": {
            "task": "notify.requeue_stale",
            "schedule": sweep,
            "options": {"expires": sweep},
        },
        # Fail runs whose question to a person expired unanswered; end their workers.
        "escalations-expire": {
            "task": "escalations.expire",
            "schedule": sweep,
            "options": {"expires": sweep},
        },
        # Terminate expired workers, fail sessions whose worker vanished, remove orphan workers.
        "workers-reap": {
            "task": "workers.reap",
            "schedule": sweep,
            "options": {"expires": sweep},
        },
    }
