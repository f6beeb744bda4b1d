"""Admin → Tokens: the bot pool. Registered here, not in secrets_meta, because its form and actions
call the engine (validation against Telegram, releasing a bot), which secrets_meta may not import.

A token is entered once in a write-only field (a password input that renders empty), validated,
and stored; it is never shown back: rows show the bot's @username, status, source and project.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from config.errors import AppError
from orchestrator import bots, maintenance
from projects.admin import ProjectAdmin
from projects.models import Project
from secrets_meta import bots as pool
from secrets_meta.models import BotToken


class BotTokenAddForm(forms.ModelForm):
    token = forms.CharField(
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="The token from @BotFather. Validated with Telegram, stored encrypted, never shown again.",
    )

    class Meta:
        model = BotToken
        fields: list[str] = []

    def clean(self):
        data = super().clean()
        token = data.get("token")
        if token:
            try:
                data["identity"] = bots.validate_token(token)
            except AppError as exc:
                self.add_error("token", exc.message)
        return data


@admin.register(BotToken)
class BotTokenAdmin(admin.ModelAdmin):
    list_display = ["username", "status", "source", "project", "last_validated_at", "last_error", "assigned_at"]
    list_filter = ["status", "source"]
    search_fields = ["username", "bot_id"]
    actions = ["revalidate", "release", "retire"]
    readonly_fields = [
        "bot_id",
        "username",
        "first_name",
        "status",
        "source",
        "project",
        "token_length",
        "last_validated_at",
        "last_error",
        "assigned_at",
        "created_by",
        "created_at",
        "updated_at",
    ]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = BotTokenAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ["token"] if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # retire instead: the audit stays with the row

    def save_model(self, request, obj, form, change):
        """Through the service: the token to the store, the row with what Telegram said."""
        if change:
            return
        row = pool.bot_add(
            token=form.cleaned_data["token"], identity=form.cleaned_data["identity"], actor=f"user:{request.user.id}"
        )
        for field in BotToken._meta.concrete_fields:
            setattr(obj, field.attname, getattr(row, field.attname))

    def save_related(self, request, form, formsets, change):
        """No related objects are edited here."""

    def _each(self, request, queryset, call) -> None:
        for row in queryset.order_by("id"):
            try:
                message = call(row)
            except AppError as exc:
                self.message_user(request, f"@{row.username}: {exc.message}", messages.ERROR)
                continue
            self.message_user(request, f"@{row.username}: {message}", messages.SUCCESS)

    @admin.action(description="Revalidate the selected bots with Telegram")
    def revalidate(self, request, queryset):
        def call(row: BotToken) -> str:
            fresh = bots.revalidate(row.id, actor=f"user:{request.user.id}")
            if fresh.last_error:
                return f"refused, now {fresh.status}: {fresh.last_error}"
            return f"valid ({fresh.status})"

        self._each(request, queryset, call)

    @admin.action(description="Release the selected bots from their projects (back to the pool)")
    def release(self, request, queryset):
        def call(row: BotToken) -> str:
            if row.status != BotToken.Status.ASSIGNED or row.project_id is None:
                return f"not assigned to a project ({row.status}); nothing to release"
            fresh = bots.bot_release(row.project_id, actor=f"user:{request.user.id}", why="released by an operator")
            suffix = f" ({fresh.last_error})" if fresh is not None and fresh.last_error else ""
            return f"released from project #{row.project_id}, now {fresh.status if fresh else 'free'}{suffix}"

        self._each(request, queryset, call)

    @admin.action(description="Retire the selected bots (never handed out again)")
    def retire(self, request, queryset):
        def call(row: BotToken) -> str:
            pool.bot_retire(bot_token_id=row.id, actor=f"user:{request.user.id}")
            return "retired; its token is forgotten"

        self._each(request, queryset, call)


# --- Projects: deleting one tears it down first ------------------------------------------------
# Registered over projects' own ProjectAdmin (projects may not import the engine): a deleted
# project's releases are stopped, its route removed, its workers ended and its bot given back to
# the pool before its rows go.
admin.site.unregister(Project)


@admin.register(Project)
class ProjectTeardownAdmin(ProjectAdmin):
    def delete_model(self, request, obj: Project) -> None:
        maintenance.project_teardown(project_id=obj.id)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        for project_id in queryset.values_list("id", flat=True):
            maintenance.project_teardown(project_id=project_id)
        super().delete_queryset(request, queryset)
