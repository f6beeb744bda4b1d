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

# Priorities (Redis: 0 is served first, 9 last). Each stage task has its own
# (``orchestrator.pipeline.STAGES``: the Architect 5 down to Notify 0, later stages first). A new
# run's first message (its Architect task) goes after all of them, lower still for a person with
# runs ahead of it, so under load the runs under way finish before new ones begin; a run resumed
# after a person answered (or told to notify) goes first.
PIPELINE_START_PRIORITY_NEW = 6
PIPELINE_START_PRIORITY = 0
MAX_PRIORITY = 9

RECONCILE_RUNS = "maintenance.reconcile_runs"

WORKERS_PAUSE_IDLE = "workers.pause_idle"
WORKERS_REAP = "workers.reap"
WORKERS_PAUSE_SESSION = "workers.pause_session"
WORKERS_RESUME_SESSION = "workers.resume_session"
WORKERS_TERMINATE_SESSION = "workers.terminate_session"

ESCALATIONS_EXPIRE = "escalations.expire"

NOTIFY_SEND_MESSAGE = "notify.send_message"
NOTIFY_REQUEUE_STALE = "notify.requeue_stale"

# A secret or a bot token was provided for a project: a run waiting for it may go on.
SECRETS_PROVIDED = "escalations.secrets_provided"

# Make the proxy's routes match the live releases (a restarted Caddy forgets them).
ROUTES_SYNC = "maintenance.sync_routes"

# Watch live releases (beat), and repair one found down (one step per task, retried with backoff).
RELEASES_PROBE = "maintenance.probe_releases"
RELEASES_REPAIR = "releases.repair"
# Finish releases left "stopping" and stop releases no live row accounts for (beat).
RELEASES_RECONCILE = "maintenance.reconcile_releases"
