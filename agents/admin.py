from celery import current_app
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Sum

from agents.models import AgentConfig, Usage, WorkerSession, WorkerTransition


@admin.register(AgentConfig)
class AgentConfigAdmin(admin.ModelAdmin):
    list_display = ["role", "backend", "model", "runtime", "time_limit_seconds", "idle_ttl_seconds",
                    "pause_ttl_seconds", "budget_usd", "updated_at"]


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
    list_display = ["id", "project", "role", "runtime", "state", "state_reason", "context_tokens",
                    "last_activity_at", "owner_node"]
    list_filter = ["state", "runtime", "role"]
    readonly_fields = [f.name for f in WorkerSession._meta.fields if f.name != "api_token_hash"]
    exclude = ["api_token_hash"]
    inlines = [TransitionInline]
    actions = [_enqueue("workers.pause_session", "Pause"), _enqueue("workers.resume_session", "Resume"),
               _enqueue("workers.terminate_session", "Terminate")]


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    list_display = ["created_at", "project", "role", "backend", "model", "input_tokens", "output_tokens",
                    "cache_read_tokens", "cache_write_tokens", "cost_usd"]
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
