"""Agents: how each role is configured, the worker sessions they run in, and what they cost."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


class Role(models.TextChoices):
    ARCHITECT = "architect", "Architect"
    DEVELOPER = "developer", "Developer"
    TESTER = "tester", "Tester"


class Backend(models.TextChoices):
    SCRIPTED = "scripted", "Scripted (deterministic, no LLM)"
    CLAUDE_CODE = "claude_code", "Claude Code (headless)"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible chat completions"


class AgentConfig(models.Model):
    """Per role: which backend and model, its prompt, and the limits it works under."""

    role = models.CharField(max_length=20, choices=Role.choices, unique=True)
    backend = models.CharField(max_length=30, choices=Backend.choices, default=Backend.SCRIPTED)
    model = models.CharField(max_length=100, blank=True)
    prompt_template = models.TextField(blank=True)
    # Empty: the WORKER_RUNTIME setting decides.
    runtime = models.CharField(max_length=20, blank=True)
    time_limit_seconds = models.PositiveIntegerField(default=900)
    idle_ttl_seconds = models.PositiveIntegerField(default=120)
    pause_ttl_seconds = models.PositiveIntegerField(default=1800)
    max_lifetime_seconds = models.PositiveIntegerField(default=6 * 3600)
    budget_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    # Resource limits of the role's worker containers (the process runtime does not enforce them).
    cpu_limit = models.FloatField(null=True, blank=True, help_text="CPUs, e.g. 1.5")
    memory_limit_mb = models.PositiveIntegerField(null=True, blank=True)
    # Backend-specific knobs, e.g. {"fail_times": 2} for the scripted agent.
    options = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["role"]
        constraints = [
            models.CheckConstraint(condition=Q(time_limit_seconds__gte=1), name="agentconfig_time_limit_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.role} ({self.backend})"

    # A Developer stage may run two agent turns (one automatic resume); every stage also
    # checks out code and talks to git around them.
    TURNS_PER_STAGE = {"developer": 2}
    STAGE_OVERHEAD_SECONDS = 60

    def stage_seconds_needed(self) -> int:
        return self.TURNS_PER_STAGE.get(self.role, 1) * self.time_limit_seconds + self.STAGE_OVERHEAD_SECONDS

    def time_limit_problem(self) -> str | None:
        """Why this config cannot work under the stage task's time limit, or None."""
        needed, limit = self.stage_seconds_needed(), settings.STAGE_SOFT_TIME_LIMIT
        if needed <= limit:
            return None
        turns = self.TURNS_PER_STAGE.get(self.role, 1)
        most = max(1, (limit - self.STAGE_OVERHEAD_SECONDS) // turns)
        return (
            f"The {self.role} time limit of {self.time_limit_seconds}s does not fit in a stage: "
            f"{turns} turn(s) plus {self.STAGE_OVERHEAD_SECONDS}s of checkout need {needed}s, but "
            f"STAGE_SOFT_TIME_LIMIT is {limit}s. Use at most {most}s, or raise STAGE_SOFT_TIME_LIMIT."
        )

    def clean(self) -> None:
        super().clean()
        problem = self.time_limit_problem()
        if problem:
            raise ValidationError({"time_limit_seconds": problem})


class WorkerSession(models.Model):
    """One worker (a container, or a process group in the embedded default) for one project."""

    class State(models.TextChoices):
        STARTING = "starting", "Starting"
        RUNNING = "running", "Running"
        IDLE = "idle", "Idle"
        PAUSED = "paused", "Paused"
        TERMINATED = "terminated", "Terminated"
        FAILED = "failed", "Failed"

    LIVE = (State.STARTING, State.RUNNING, State.IDLE, State.PAUSED)

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="worker_sessions")
    run = models.ForeignKey(
        "projects.PipelineRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="worker_sessions"
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    runtime = models.CharField(max_length=20)
    # The runtime's handle: a container id, or the process group id of the process runtime.
    container_id = models.CharField(max_length=100, blank=True)
    workspace = models.CharField(max_length=500, blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.STARTING)
    state_reason = models.CharField(max_length=200, blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    agent_session_id = models.CharField(max_length=100, blank=True)
    context_tokens = models.PositiveIntegerField(default=0)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    owner_node = models.CharField(max_length=200, blank=True)
    # The worker's short-lived API token (channel 2), stored as a SHA-256 hash, scoped to ``run``.
    api_token_hash = models.CharField(max_length=128, blank=True, db_index=True)
    api_token_expires_at = models.DateTimeField(null=True, blank=True)
    # An AgentResult reported through `orchestrator-cli result` (validated when it arrived).
    reported_result = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    terminated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One live worker per project and role: a rerun finds it instead of starting another.
            models.UniqueConstraint(
                fields=["project", "role"],
                condition=Q(state__in=["starting", "running", "idle", "paused"]),
                name="workersession_one_live_per_project_role",
            ),
        ]
        indexes = [models.Index(fields=["state", "last_activity_at"], name="workersession_state_activity")]

    def __str__(self) -> str:
        return f"{self.role} worker #{self.pk} ({self.state})"


class WorkerTransition(models.Model):
    """Every state change of a worker session: when, from what, to what, and why."""

    session = models.ForeignKey(WorkerSession, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=20, blank=True)
    to_state = models.CharField(max_length=20)
    reason = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.from_state or '-'} → {self.to_state} ({self.reason})"


class Usage(models.Model):
    """One agent turn's tokens and cost: the ledger behind every cost figure."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="usage")
    stage_run = models.ForeignKey(
        "projects.StageRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="usage"
    )
    session = models.ForeignKey(WorkerSession, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage")
    role = models.CharField(max_length=20, choices=Role.choices)
    backend = models.CharField(max_length=30, choices=Backend.choices)
    model = models.CharField(max_length=100, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cache_read_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    # The stage claim the turn ran under; a turn of a later claim of the same stage run is a
    # rerun (the worker died after the turn but before the stage's success was committed):
    # both turns really cost money, so both rows stay, and the rerun says why.
    stage_attempt = models.PositiveIntegerField(null=True, blank=True)
    rerun = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "usage"
        constraints = [models.CheckConstraint(condition=Q(cost_usd__gte=0), name="usage_cost_not_negative")]

    def __str__(self) -> str:
        return f"{self.role} {self.backend} ${self.cost_usd}"


class Escalation(models.Model):
    """A question to a person, raised when the system must not go on alone."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ANSWERED = "answered", "Answered"
        EXPIRED = "expired", "Expired"

    class Reason(models.TextChoices):
        AGENT_BLOCKED = "agent_blocked", "The agent is blocked"
        TESTS_FAILING = "tests_failing", "Tests still fail after the last iteration"
        BUDGET = "budget", "The budget would be exceeded"
        STAGE_ERROR = "stage_error", "A stage failed with an error that cannot be retried"
        SECRETS_MISSING = "secrets_missing", "Secrets the person must provide are missing"
        BOT_TOKEN = "bot_token", "The bot needs a token (pool empty, or the person's own bot)"
        RELEASE_DOWN = "release_down", "A live release is down and the factory could not repair it"
        REPO_NAME_TAKEN = "repo_name_taken", "The project's repository name is someone else's"

    class Action(models.TextChoices):
        GUIDANCE = "guidance", "Go on with this guidance"
        RAISE_BUDGET = "raise_budget", "Raise the budget and go on"
        CANCEL = "cancel", "Cancel the run"
        PROVIDED = "provided", "The missing values were provided"
        RETRY = "retry", "Try the repair again"

    run = models.ForeignKey("projects.PipelineRun", on_delete=models.CASCADE, related_name="escalations")
    stage = models.CharField(max_length=20)
    reason = models.CharField(max_length=30, choices=Reason.choices)
    question = models.TextField()
    context = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    deadline = models.DateTimeField()
    action = models.CharField(max_length=20, choices=Action.choices, blank=True)
    answer = models.TextField(blank=True)
    budget_increase_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    answered_by = models.ForeignKey("auth.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    answered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["run"], condition=Q(status="open"), name="escalation_one_open_per_run"),
        ]

    def __str__(self) -> str:
        return f"escalation #{self.pk} ({self.status}): {self.question[:60]}"
