"""Projects and their pipeline runs: the truth about what the factory is doing."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Project(models.Model):
    class Kind(models.TextChoices):
        WEB_SERVICE = "web_service", "Web service"
        TELEGRAM_BOT = "telegram_bot", "Telegram bot"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="projects")
    description = models.TextField()
    # Name, slug and kind come from the Architect's spec; empty until it has run.
    name = models.CharField(max_length=100, blank=True)
    slug = models.SlugField(max_length=60, null=True, blank=True)
    kind = models.CharField(max_length=30, choices=Kind.choices, blank=True)
    spec = models.JSONField(null=True, blank=True)
    repo_url = models.CharField(max_length=500, blank=True)
    # On GitHub (the `github` code host): the open pull request of the latest run, and the last
    # CI status seen (the Tester's `factory/tests`, then the check runs of the commit to deploy).
    pull_request_number = models.PositiveIntegerField(null=True, blank=True)
    pull_request_url = models.CharField(max_length=500, blank=True)
    ci_status = models.CharField(max_length=20, blank=True)
    ci_updated_at = models.DateTimeField(null=True, blank=True)
    # A bot project: run as the person's own bot (they give its token) instead of one from the pool.
    own_bot = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Deleted by its owner: releases stopped, route removed, bot given back; the row and its runs
    # stay as history, out of every list and detail (the slug stays taken).
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["slug"], name="project_slug_unique"),
            models.CheckConstraint(condition=~Q(description=""), name="project_description_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name or f"project #{self.pk}"


class Stage(models.TextChoices):
    ARCHITECT = "architect", "Architect"
    PREPARER = "preparer", "Preparer"
    DEVELOPER = "developer", "Developer"
    TESTER = "tester", "Tester"
    DEPLOYER = "deployer", "Deployer"
    NOTIFY = "notify", "Notify"


class PipelineRun(models.Model):
    class Kind(models.TextChoices):
        CREATE = "create", "Create"
        CHANGE = "change", "Change"
        REDEPLOY = "redeploy", "Redeploy"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        WAITING_HUMAN = "waiting_human", "Waiting for a person"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.WAITING_HUMAN)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.CREATE)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    current_stage = models.CharField(max_length=20, choices=Stage.choices, blank=True)
    iteration = models.PositiveIntegerField(default=1)
    max_iterations = models.PositiveIntegerField(default=3)
    # What a person asked of a ``change`` run ("also roll dice"); empty for the other kinds.
    request = models.TextField(blank=True)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    budget_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    error_code = models.CharField(max_length=60, blank=True)
    error_message = models.TextField(blank=True)
    # The final message told to the person, rendered by code from this row (see Notify).
    result_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One run at a time per project.
            models.UniqueConstraint(
                fields=["project"],
                condition=Q(status__in=["queued", "running", "waiting_human"]),
                name="run_one_active_per_project",
            ),
            models.CheckConstraint(condition=Q(iteration__gte=1), name="run_iteration_positive"),
        ]

    def __str__(self) -> str:
        return f"run #{self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def branch(self) -> str:
        return f"run-{self.pk}"


class StageRun(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="stages")
    stage = models.CharField(max_length=20, choices=Stage.choices)
    iteration = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    # How many times a task has claimed this row; the claim's number fences late writers.
    attempt = models.PositiveIntegerField(default=0)
    # How many claims ended in a transient outside failure (what STAGE_MAX_ATTEMPTS limits);
    # quota waits and reconciler requeues raise ``attempt`` but not this.
    transient_failures = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=64, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "stage", "iteration"], name="stagerun_unique_per_iteration"),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="stagerun_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.stage} #{self.iteration} of run {self.run_id} ({self.status})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class RunEvent(models.Model):
    class Type(models.TextChoices):
        RUN_QUEUED = "run.queued", "Run queued"
        RUN_STARTED = "run.started", "Run started"
        STAGE_STARTED = "stage.started", "Stage started"
        STAGE_SUCCEEDED = "stage.succeeded", "Stage succeeded"
        STAGE_FAILED = "stage.failed", "Stage failed"
        STAGE_REQUEUED = "stage.requeued", "Stage re-enqueued"
        STAGE_WAITING = "stage.waiting", "Stage waiting for a worker"
        AGENT_PROGRESS = "agent.progress", "Agent progress"
        AGENT_QUESTION = "agent.question", "Agent question"
        TESTS_FAILED = "tests.failed", "Tests failed"
        DEPLOYED = "deploy.live", "Deployed"
        ROLLED_BACK = "deploy.rolled_back", "The previous release was started again"
        RUN_SUCCEEDED = "run.succeeded", "Run succeeded"
        RUN_FAILED = "run.failed", "Run failed"
        RUN_CANCELLED = "run.cancelled", "Run cancelled"
        NOTIFIED = "run.notified", "Person notified"
        ESCALATION_RAISED = "escalation.raised", "A person was asked"
        ESCALATION_ANSWERED = "escalation.answered", "A person answered"
        ESCALATION_EXPIRED = "escalation.expired", "Nobody answered in time"

    run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=40, choices=Type.choices)
    stage = models.CharField(max_length=20, choices=Stage.choices, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # Events that happen at most once in a run's life: a rerun of the stage that records one
    # (after a crash) finds it there instead of telling the person twice.
    ONCE = (Type.RUN_QUEUED, Type.RUN_STARTED, Type.RUN_SUCCEEDED, Type.RUN_FAILED, Type.RUN_CANCELLED, Type.NOTIFIED)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["run", "id"], name="runevent_run_id")]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "type"],
                condition=Q(
                    type__in=[
                        "run.queued",
                        "run.started",
                        "run.succeeded",
                        "run.failed",
                        "run.cancelled",
                        "run.notified",
                    ]
                ),
                name="runevent_once_per_run",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} (run {self.run_id})"


class Deployment(models.Model):
    class Status(models.TextChoices):
        STARTING = "starting", "Starting"
        LIVE = "live", "Live"
        STOPPING = "stopping", "Stopping"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    HOLDS_PORT = (Status.STARTING, Status.LIVE, Status.STOPPING)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="deployments")
    run = models.ForeignKey(PipelineRun, on_delete=models.CASCADE, related_name="deployments")
    target = models.CharField(max_length=20, default="local")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.STARTING)
    # Internal port: allocated atomically by the unique constraint below, never shown to people.
    port = models.PositiveIntegerField()
    pid = models.PositiveIntegerField(null=True, blank=True)
    commit_sha = models.CharField(max_length=40)
    release_dir = models.CharField(max_length=500, blank=True)
    url = models.CharField(max_length=300, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    live_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # The release probe's last look (beat): when, whether healthy, how long it took, what it saw.
    probed_at = models.DateTimeField(null=True, blank=True)
    probe_ok = models.BooleanField(null=True, blank=True)
    probe_ms = models.PositiveIntegerField(null=True, blank=True)
    probe_detail = models.CharField(max_length=300, blank=True)
    restarts = models.PositiveIntegerField(default=0)
    # The release's resource use at the last probe (from its deploy target): CPU in percent of one
    # core, resident memory in bytes; empty when it was not running or the target could not tell.
    cpu_percent = models.FloatField(null=True, blank=True)
    memory_bytes = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["port"],
                condition=Q(status__in=["starting", "live", "stopping"]),
                name="deployment_port_in_use_unique",
            ),
            # A run may deploy more than once (a release that failed its checks goes back to the
            # Developer), but only one of its releases is being started at a time.
            models.UniqueConstraint(
                fields=["run"], condition=Q(status="starting"), name="deployment_one_starting_per_run"
            ),
            models.UniqueConstraint(
                fields=["project"], condition=Q(status="live"), name="deployment_one_live_per_project"
            ),
        ]

    def __str__(self) -> str:
        return f"deployment #{self.pk} of {self.project} ({self.status})"


class DeployLock(models.Model):
    """One deploy per project at a time: the Deployer holds its project's row while it starts,
    checks and swaps releases. The holder is a StageRun; its lock is free once that stage is no
    longer running with a fresh heartbeat (a crashed holder) or past ``expires_at``."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, primary_key=True, related_name="deploy_lock")
    stage_run = models.ForeignKey(StageRun, on_delete=models.CASCADE, related_name="+")
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"deploy lock of {self.project} (stage run {self.stage_run_id})"


class Incident(models.Model):
    """An outage of a project's live release, from detection to its end: restarted, rolled back,
    recovered by itself (resolved), or given up on (failed: a person must decide)."""

    class Status(models.TextChoices):
        DETECTED = "detected", "Detected"
        RECOVERING = "recovering", "Recovering"
        RESOLVED = "resolved", "Resolved"
        FAILED = "failed", "Failed"

    OPEN = (Status.DETECTED, Status.RECOVERING)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="incidents")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="incidents")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DETECTED)
    reason = models.CharField(max_length=300)
    restarts = models.PositiveIntegerField(default=0)
    # The release serving when it ended (the same one restarted, or an earlier one rolled back to).
    serving = models.ForeignKey(Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    detected_at = models.DateTimeField(auto_now_add=True)
    recovering_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-detected_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["project"], condition=Q(status__in=["detected", "recovering"]), name="incident_one_open"
            ),
        ]

    def __str__(self) -> str:
        return f"incident #{self.pk} of {self.project} ({self.status})"


class IncidentEvent(models.Model):
    """One step of an incident, for the person and the operator to read."""

    class Type(models.TextChoices):
        DETECTED = "detected", "Found down"
        RESTARTING = "restarting", "Restarting"
        RESTART_FAILED = "restart_failed", "Restart failed"
        RESTARTED = "restarted", "Restarted"
        ROLLING_BACK = "rolling_back", "Rolling back"
        ROLLED_BACK = "rolled_back", "Rolled back"
        ROLLBACK_FAILED = "rollback_failed", "Rollback failed"
        RECOVERED = "recovered", "Recovered by itself"
        GAVE_UP = "gave_up", "Gave up: a person must decide"
        RETRY_ASKED = "retry_asked", "A person asked to try again"
        CLOSED = "closed", "Closed: the project was stopped"

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=30, choices=Type.choices)
    detail = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.type} (incident {self.incident_id})"


class TelegramAccount(models.Model):
    """A Telegram user linked to a Django user: the only way a Telegram user is let in."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="telegram")
    telegram_user_id = models.BigIntegerField(unique=True)
    chat_id = models.BigIntegerField(null=True, blank=True)
    username = models.CharField(max_length=100, blank=True)
    # Set when Telegram says we may not write there any more (bot blocked, chat deleted).
    blocked_at = models.DateTimeField(null=True, blank=True)
    blocked_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"@{self.username or self.telegram_user_id} → {self.user}"


class Invite(models.Model):
    """A code an operator hands out; ``/start <code>`` in Telegram redeems it once."""

    code = models.CharField(max_length=40, unique=True)
    # The person it is for; empty: redeeming creates a new user.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="invites"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    expires_at = models.DateTimeField()
    redeemed_at = models.DateTimeField(null=True, blank=True)
    redeemed_by = models.BigIntegerField(null=True, blank=True, help_text="Telegram user id")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"invite {self.code[:6]}… ({'used' if self.redeemed_at else 'open'})"


class OutboundMessage(models.Model):
    """A message the system owes a chat in Telegram: the outbox, and the only way anything is sent.

    The row is the truth; the ``notify.send_message`` task delivers it (see
    orchestrator/telegram/delivery.py). ``sending`` marks an attempt under way: it is claimed by
    compare-and-set before the HTTP call, so nothing else sends it meanwhile.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Being sent"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        BLOCKED = "blocked", "Blocked (the chat no longer takes our messages)"

    UNFINISHED = (Status.PENDING, Status.SENDING)

    # The person's account; empty for an answer to someone we do not know (a refusal).
    account = models.ForeignKey(
        TelegramAccount, on_delete=models.CASCADE, null=True, blank=True, related_name="outbound_messages"
    )
    # The chat it goes to; messages to one chat go out in the order of their ids.
    chat_id = models.BigIntegerField()
    run = models.ForeignKey(
        PipelineRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="outbound_messages"
    )
    # The question this message carries: a reply to it is the answer.
    escalation = models.ForeignKey(
        "agents.Escalation", on_delete=models.SET_NULL, null=True, blank=True, related_name="outbound_messages"
    )
    # The run event it tells of (one message per event and person: telling twice is a no-op).
    event = models.ForeignKey(RunEvent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    text = models.TextField()
    html = models.BooleanField(default=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    # Attempts claimed so far; the claim's number fences the writes of that attempt.
    attempts = models.PositiveIntegerField(default=0)
    claimed_at = models.DateTimeField(null=True, blank=True)  # when the latest attempt began
    next_attempt_at = models.DateTimeField(null=True, blank=True)  # a retry is due then, not before
    telegram_message_id = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "account"], name="outbound_one_per_event_and_account"),
            models.CheckConstraint(condition=~Q(text=""), name="outbound_text_not_empty"),
            models.CheckConstraint(
                condition=~Q(status="sending") | Q(claimed_at__isnull=False), name="outbound_sending_is_claimed"
            ),
        ]
        indexes = [
            models.Index(fields=["account", "status", "id"], name="outbound_account_status"),
            models.Index(fields=["chat_id", "status", "id"], name="outbound_chat_status"),
        ]

    def __str__(self) -> str:
        return f"message #{self.pk} to chat {self.chat_id} ({self.status})"
