"""The Celery application: configuration comes from Django settings (``CELERY_*``)."""

from __future__ import annotations

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["orchestrator"])


@app.on_after_finalize.connect
def _install_beat_schedule(sender: Celery, **_: object) -> None:
    # The one schedule module; django-celery-beat copies it into its tables, editable in admin.
    from orchestrator.schedule import beat_schedule

    sender.conf.beat_schedule = beat_schedule()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _close_old_connections(sender=None, **_: object) -> None:
    # What Django does around a request: drop a connection that broke or outlived CONN_MAX_AGE,
    # keep a healthy one for the next task (the fixup no longer closes it: CELERY_DB_REUSE_MAX).
    # Not for an eager task: it runs inside its caller, whose connection is not the task's to close.
    from django.db import close_old_connections

    if not getattr(getattr(sender, "request", None), "is_eager", False):
        close_old_connections()


@signals.celeryd_after_setup.connect
def _remember_node(sender: str, **_: object) -> None:
    # Worker sessions record the node that owns them; pool processes inherit this.
    os.environ["FACTORY_NODE"] = sender


@signals.worker_ready.connect
def _fail_vanished_workers(**_: object) -> None:
    """A node that starts fails at once the worker sessions whose workers are gone, so none is
    called paused until the next reap: a node that was SIGKILLed takes its paused workers with it
    (the kernel sends SIGHUP to a stopped process group whose parent died)."""
    from django.db import connection

    from orchestrator.maintenance import workers_fail_vanished

    try:
        workers_fail_vanished(reason=f"worker vanished (found when node {os.environ.get('FACTORY_NODE', '?')} started)")
    finally:
        connection.close()  # the main process does not keep a connection its pool does not use


@signals.worker_ready.connect
def _adopt_releases(**_: object) -> None:
    """A node that starts adopts the releases it finds (they outlive the factory's processes):
    rows left "stopping" are finished, releases without a live or starting row are stopped, and a
    live row whose release is not running is found down at once (its repair restarts it)."""
    from django.db import connection

    from orchestrator.maintenance import releases_reconcile

    try:
        releases_reconcile(adopt=True)  # an error is logged by Celery's signal dispatch; the node starts
    finally:
        connection.close()


@signals.worker_shutdown.connect
def _terminate_owned_workers(**_: object) -> None:
    """A node that shuts down ends the worker sessions it owns (a SIGKILL leaves them to the reaper)."""
    from orchestrator.maintenance import workers_terminate_node

    node = os.environ.get("FACTORY_NODE")
    if node:
        workers_terminate_node(node=node)
