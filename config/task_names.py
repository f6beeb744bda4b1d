"""Every task name that is sent by name, in one place.

Domain apps never import the engine: they enqueue its work by these names once their
transaction commits. ``tests/test_task_names.py`` checks that each one is a registered task.
"""
from __future__ import annotations

PIPELINE_START = "pipeline.start"
PIPELINE_ARCHITECT = "pipeline.architect"
PIPELINE_PREPARER = "pipeline.preparer"
PIPELINE_DEVELOPER = "pipeline.developer"
PIPELINE_TESTER = "pipeline.tester"
PIPELINE_DEPLOYER = "pipeline.deployer"
PIPELINE_NOTIFY = "pipeline.notify"

RECONCILE_RUNS = "maintenance.reconcile_runs"

WORKERS_PAUSE_IDLE = "workers.pause_idle"
WORKERS_REAP = "workers.reap"
WORKERS_PAUSE_SESSION = "workers.pause_session"
WORKERS_RESUME_SESSION = "workers.resume_session"
WORKERS_TERMINATE_SESSION = "workers.terminate_session"

ESCALATIONS_EXPIRE = "escalations.expire"

NOTIFY_SEND_MESSAGE = "notify.send_message"
NOTIFY_REQUEUE_STALE = "notify.requeue_stale"
