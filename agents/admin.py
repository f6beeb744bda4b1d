"""Admin for agents: role configs, worker sessions (with their actions and what the agent last
said), the usage ledger, and the questions waiting for a person.

Worker sessions, usage rows and escalations are made by the system: no Add form. A worker
action is sent to the engine by task name (the engine owns the runtimes) and the page waits a
few seconds for the session's row to change, then says what happened to each worker.
"""

from __future__ import annotations

import time

from celery import current_app
from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Sum
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from agents.models import AgentConfig, Escalation, Usage, WorkerSession, WorkerTransition
from agents.services import escalation_answer
from config import task_names
from config.errors import AppError
from projects.admin import ReadOnlyInline, age, confirm, status_badge
from projects.models import RunEvent, StageRun
from secrets_meta import redaction

State = WorkerSession.State
# How long a worker action waits for the engine to act before it reports "queued, no answer yet".
ACTION_WAIT_SECONDS = 10.0


@admin.register(AgentConfig)
class AgentConfigAdmin(admin.ModelAdmin):
    list_display = [
        "role",
        "backend",
        "model",
        "runtime",
        "time_limit_seconds",
        "idle_ttl_seconds",
        "pause_ttl_seconds",
        "budget_usd",
        "updated_at",
    ]
    list_filter = ["backend", "runtime"]
    search_fields = ["role", "backend", "model", "prompt_template"]
    ordering = ["role"]


class TransitionInline(ReadOnlyInline):
    model = WorkerTransition
    fields = ["at", "from_state", "to_state", "reason"]
    readonly_fields = fields


# action name -> (task, label, the states it applies to, the states that mean it was done)
WORKER_ACTIONS = {
    "pause": (task_names.WORKERS_PAUSE_SESSION, "Pause", (State.RUNNING, State.IDLE), (State.PAUSED,)),
    "resume": (task_names.WORKERS_RESUME_SESSION, "Resume", (State.PAUSED,), (State.RUNNING,)),
    "terminate": (
        task_names.WORKERS_TERMINATE_SESSION,
        "Terminate",
        tuple(WorkerSession.LIVE),
        (State.TERMINATED, State.FAILED),
    ),
}


def worker_action(modeladmin, request, queryset, name: str) -> None:
    """Send the action to the engine for each worker it applies to, wait for the rows to change,
    and report one message per worker."""
    task, label, applies, done = WORKER_ACTIONS[name]
    before = {row["id"]: row["state"] for row in queryset.values("id", "state")}
    sent = []
    for session_id, state in sorted(before.items()):
        if state not in applies:
            modeladmin.message_user(
                request, f"Worker #{session_id} is {state}: nothing to {label.lower()}.", messages.WARNING
            )
            continue
        sent.append(session_id)
        transaction.on_commit(lambda s=session_id: current_app.send_task(task, kwargs={"session_id": s}))
    if not sent:
        return
    deadline = time.monotonic() + ACTION_WAIT_SECONDS
    now = {}
    while True:
        now = {
            row["id"]: row for row in WorkerSession.objects.filter(id__in=sent).values("id", "state", "state_reason")
        }
        if all(now[s]["state"] != before[s] for s in sent if s in now) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for session_id in sent:
        row = now.get(session_id)
        if row is None:
            modeladmin.message_user(request, f"Worker #{session_id} is gone.", messages.WARNING)
        elif row["state"] in done:
            modeladmin.message_user(
                request,
                f"Worker #{session_id}: {before[session_id]} → {row['state']} ({row['state_reason']}).",
                messages.SUCCESS,
            )
        elif row["state"] != before[session_id]:
            modeladmin.message_user(
                request,
                f"Worker #{session_id}: {before[session_id]} → {row['state']} ({row['state_reason']}).",
                messages.WARNING,
            )
        else:
            modeladmin.message_user(
                request,
                f"Worker #{session_id}: {label.lower()} queued, but no Celery worker acted on it within "
                f"{ACTION_WAIT_SECONDS:.0f} s (is one consuming the maintenance queue?). Reload to see.",
                messages.WARNING,
            )


@admin.register(WorkerSession)
class WorkerSessionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "run",
        "role",
        "runtime",
        "state_badge",
        "state_reason",
        "cost",
        "context_tokens",
        "last_activity_at",
        "age",
        "owner_node",
    ]
    list_filter = ["state", "runtime", "role", "created_at"]
    search_fields = ["=id", "project__name", "project__slug", "container_id", "owner_node", "state_reason"]
    list_select_related = ["project", "run"]
    ordering = ["-created_at"]
    exclude = ["api_token_hash"]
    readonly_fields = ["last_output", *[f.name for f in WorkerSession._meta.fields if f.name != "api_token_hash"]]
    inlines = [TransitionInline]
    actions = ["pause_workers", "resume_workers", "terminate_workers"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(total_cost=Sum("usage__cost_usd"))

    def has_add_permission(self, request) -> bool:
        return False  # workers are started by stages

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # pause, resume and terminate are actions

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # its worker may still run: terminate it instead

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: WorkerSession):
        return status_badge(obj.state)

    @admin.display(description="cost (USD)", ordering="total_cost")
    def cost(self, obj: WorkerSession):
        return f"{obj.total_cost or 0:.4f}"

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: WorkerSession):
        return age(obj.created_at)

    @admin.display(description="what the agent last said")
    def last_output(self, obj: WorkerSession):
        """The last stage this worker worked (its outcome and error), the agent's reported result
        and its latest progress lines and questions; secret values redacted."""
        redaction.load_project(obj.project_id)
        lines: list[tuple[str, str]] = []
        if obj.run_id:
            stage = (
                StageRun.objects.filter(run_id=obj.run_id, stage=obj.role, started_at__isnull=False)
                .order_by("-started_at")
                .first()
            )
            if stage is not None:
                lines.append(
                    (f"{stage.stage} #{stage.iteration}", f"{stage.status} at {stage.finished_at or stage.started_at}")
                )
                output = stage.output or {}
                for key in ("summary", "commit", "exit_code"):
                    if output.get(key) not in (None, ""):
                        lines.append((key, str(output[key])))
                report = output.get("report") or {}
                for failing in (report.get("failing") or [])[:5]:
                    lines.append(("failing", f"{failing.get('name')}: {failing.get('message', '')[:500]}"))
                if stage.error:
                    lines.append(("error", stage.error[-2000:]))
            events = RunEvent.objects.filter(
                run_id=obj.run_id,
                type__in=[RunEvent.Type.AGENT_PROGRESS, RunEvent.Type.AGENT_QUESTION],
                payload__session_id=obj.id,
            ).order_by("-id")[:20]
            for event in reversed(list(events)):
                text = event.payload.get("message") or event.payload.get("question") or ""
                lines.append((f"{event.created_at:%H:%M:%S} {event.type}", text))
        if obj.reported_result:
            result = obj.reported_result
            lines.append(("reported result", f"{result.get('status')}: {result.get('summary', '')}"))
        if not lines:
            return "Nothing yet."
        redacted = [(label, redaction.redact(text)) for label, text in lines]
        body = format_html_join("\n", "{}: {}", redacted)
        return format_html('<pre class="agent-output" style="white-space:pre-wrap">{}</pre>', body)

    @admin.action(description="Pause the selected workers")
    def pause_workers(self, request, queryset):
        worker_action(self, request, queryset, "pause")

    @admin.action(description="Resume the selected paused workers")
    def resume_workers(self, request, queryset):
        worker_action(self, request, queryset, "resume")

    @admin.action(description="Terminate the selected workers")
    def terminate_workers(self, request, queryset):
        if "confirm" not in request.POST:
            return confirm(
                self,
                request,
                queryset.order_by("id"),
                action="terminate_workers",
                question="Terminate these workers? Their containers or processes end; a run that needs one "
                "starts a new worker.",
                verb="Terminate",
            )
        worker_action(self, request, queryset, "terminate")


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "project",
        "run",
        "role",
        "backend",
        "model",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
        "rerun",
    ]
    list_filter = ["backend", "role", "model", "rerun", "created_at"]
    search_fields = ["project__name", "project__slug", "model", "project__owner__username"]
    list_select_related = ["project", "stage_run"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    readonly_fields = [f.name for f in Usage._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False  # the ledger is written by agent turns

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # money really spent stays in the ledger

    @admin.display(description="run")
    def run(self, obj: Usage):
        if obj.stage_run is None:
            return "-"
        link = reverse("admin:projects_pipelinerun_change", args=[obj.stage_run.run_id])
        return format_html('<a href="{}">#{}</a>', link, obj.stage_run.run_id)

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        try:
            qs = response.context_data["cl"].queryset
        except (AttributeError, KeyError):
            return response
        response.context_data["title"] = f"Usage: total ${qs.aggregate(t=Sum('cost_usd'))['t'] or 0}"
        return response


class EscalationAnswerForm(forms.ModelForm):
    """Operators answer here; saving calls the same service as Telegram does."""

    reply_action = forms.ChoiceField(
        label="Answer",
        choices=[(a.value, a.label) for a in Escalation.Action if a != Escalation.Action.PROVIDED],
        help_text="A question about missing secrets or a bot token is answered by giving the values "
        "(Secrets, Bot tokens, or the chat), not here.",
    )
    reply_text = forms.CharField(label="Guidance", widget=forms.Textarea, required=False)
    reply_budget = forms.DecimalField(label="Add to budget (USD)", required=False, min_value=0)

    class Meta:
        model = Escalation
        fields: list[str] = []

    def clean(self):
        data = super().clean()
        action = data.get("reply_action")
        if action == Escalation.Action.GUIDANCE and not (data.get("reply_text") or "").strip():
            self.add_error("reply_text", "Guidance needs some text for the agent.")
        if action == Escalation.Action.RAISE_BUDGET and not data.get("reply_budget"):
            self.add_error("reply_budget", "Say how many dollars to add.")
        return data


@admin.register(Escalation)
class EscalationAdmin(admin.ModelAdmin):
    form = EscalationAnswerForm
    list_display = ["id", "run", "project", "stage", "reason", "status_badge", "deadline", "answered_by", "created_at"]
    list_filter = ["status", "reason", "stage", "created_at"]
    search_fields = ["=id", "question", "answer", "run__project__name", "run__project__slug"]
    list_select_related = ["run__project", "answered_by"]
    ordering = ["-created_at"]
    readonly_fields = [
        "run",
        "stage",
        "reason",
        "question",
        "context",
        "status",
        "deadline",
        "action",
        "answer",
        "budget_increase_usd",
        "answered_by",
        "answered_at",
        "created_at",
    ]

    def get_fields(self, request, obj=None):
        answerable = obj is not None and obj.status == Escalation.Status.OPEN
        return self.readonly_fields + (["reply_action", "reply_text", "reply_budget"] if answerable else [])

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Only an open question is answered here; an answered or expired one is read-only.
        return obj is None or obj.status == Escalation.Status.OPEN

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="project", ordering="run__project__name")
    def project(self, obj: Escalation):
        return obj.run.project

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Escalation):
        return status_badge({"open": "waiting_human", "answered": "succeeded"}.get(obj.status, obj.status), obj.status)

    def save_model(self, request, obj, form, change):
        request._escalation_refused = None
        try:
            escalation_answer(
                escalation_id=obj.id,
                user=request.user,
                action=form.cleaned_data["reply_action"],
                answer=form.cleaned_data.get("reply_text") or "",
                budget_increase_usd=form.cleaned_data.get("reply_budget"),
            )
        except AppError as exc:
            request._escalation_refused = exc.message

    def save_related(self, request, form, formsets, change):
        """Nothing related is edited here."""

    def log_change(self, request, obj, message):
        if getattr(request, "_escalation_refused", None) is None:
            super().log_change(request, obj, message)

    def response_change(self, request, obj):
        refused = getattr(request, "_escalation_refused", None)
        if refused is not None:  # only the refusal, and the question stays open on its page
            self.message_user(request, refused, messages.ERROR)
            return HttpResponseRedirect(request.path)
        obj.refresh_from_db()
        verb = {
            Escalation.Action.CANCEL: "the run is cancelled",
            Escalation.Action.RAISE_BUDGET: f"the budget is raised by ${obj.budget_increase_usd}; the run goes on",
        }.get(obj.action, "the run goes on from its stage")
        self.message_user(request, f"Answered question #{obj.id} ({obj.get_action_display()}): {verb}.")
        return HttpResponseRedirect(reverse("admin:agents_escalation_changelist"))
