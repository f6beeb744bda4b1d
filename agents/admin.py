from celery import current_app
from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Sum

from agents.models import AgentConfig, Escalation, Usage, WorkerSession, WorkerTransition
from agents.services import escalation_answer
from config import task_names
from config.errors import AppError


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


class TransitionInline(admin.TabularInline):
    model = WorkerTransition
    extra = 0
    can_delete = False
    fields = ["at", "from_state", "to_state", "reason"]
    readonly_fields = fields


def _enqueue(task: str, label: str):
    """An admin action that asks the engine (by task name) to act on the selected workers."""

    def action(modeladmin, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        for session_id in ids:
            transaction.on_commit(lambda s=session_id: current_app.send_task(task, kwargs={"session_id": s}))
        messages.info(request, f"{label}: {len(ids)} worker(s) queued.")

    action.__name__ = task.replace(".", "_")
    action.short_description = f"{label} selected workers"
    return action


@admin.register(WorkerSession)
class WorkerSessionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "role",
        "runtime",
        "state",
        "state_reason",
        "context_tokens",
        "last_activity_at",
        "owner_node",
    ]
    list_filter = ["state", "runtime", "role"]
    readonly_fields = [f.name for f in WorkerSession._meta.fields if f.name != "api_token_hash"]
    exclude = ["api_token_hash"]
    inlines = [TransitionInline]
    actions = [
        _enqueue(task_names.WORKERS_PAUSE_SESSION, "Pause"),
        _enqueue(task_names.WORKERS_RESUME_SESSION, "Resume"),
        _enqueue(task_names.WORKERS_TERMINATE_SESSION, "Terminate"),
    ]


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "project",
        "role",
        "backend",
        "model",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
    ]
    list_filter = ["backend", "role", "model", "project"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Usage._meta.fields]

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

    reply_action = forms.ChoiceField(label="Answer", choices=Escalation.Action.choices, required=False)
    reply_text = forms.CharField(label="Guidance", widget=forms.Textarea, required=False)
    reply_budget = forms.DecimalField(label="Add to budget (USD)", required=False, min_value=0)

    class Meta:
        model = Escalation
        fields: list[str] = []


@admin.register(Escalation)
class EscalationAdmin(admin.ModelAdmin):
    form = EscalationAnswerForm
    list_display = ["id", "run", "stage", "reason", "status", "deadline", "answered_by", "created_at"]
    list_filter = ["status", "reason"]
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

    def save_model(self, request, obj, form, change):
        action = form.cleaned_data.get("reply_action")
        if not action:
            return
        try:
            escalation_answer(
                escalation_id=obj.id,
                user=request.user,
                action=action,
                answer=form.cleaned_data.get("reply_text") or "",
                budget_increase_usd=form.cleaned_data.get("reply_budget"),
            )
        except AppError as exc:
            messages.error(request, exc.message)
