"""The Celery application: configuration comes from Django settings (``CELERY_*``)."""
from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["orchestrator"])


@app.on_after_finalize.connect
def _install_beat_schedule(sender: Celery, **_: object) -> None:
    # The one schedule module; django-celery-beat copies it into its tables, editable in admin.
    from orchestrator.schedule import beat_schedule

    sender.conf.beat_schedule = beat_schedule()
