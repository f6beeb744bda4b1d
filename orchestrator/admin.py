"""Admin → Tokens: the bot pool. Registered here, not in secrets_meta, because its form and actions
call the engine (validation against Telegram, releasing a bot), which secrets_meta may not import.

A token is entered once in a write-only field (a password input that renders empty), validated,
and stored; it is never shown back: rows show the bot's @username, status, source and project.
"""

from __future__ import annotations

from pathlib import Path

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html

from config.errors import AppError
from orchestrator import bots, maintenance, releases
from orchestrator.deploy.targets import target_for
from projects import services
from projects.admin import DeploymentAdmin, ProjectAdmin, confirm
from projects.models import Deployment, Project
from secrets_meta import bots as pool
from secrets_meta import redaction
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

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # a bot is added by its token; revalidate, release and retire are actions

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


class ChangeRequestForm(forms.Form):
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text='The change, in a sentence, e.g. "also roll dice". A run of kind change starts; a change that '
        "fails leaves the live release serving.",
    )


class RollbackForm(forms.Form):
    release = forms.IntegerField(
        required=False, min_value=1, help_text="The release (deployment id) to serve again; empty: the one before."
    )


@admin.register(Project)
class ProjectTeardownAdmin(ProjectAdmin):
    """Projects, with the engine's actions on live ones: each asks for confirmation first and
    reports one message per project (the API's own refusal messages)."""

    actions = ["request_change", "redeploy", "stop_releases", "start_release", "roll_back"]

    def _confirm(self, request, queryset, *, action: str, question: str, verb: str, form=None):
        return confirm(self, request, queryset.order_by("id"), action=action, question=question, verb=verb, form=form)

    def _each(self, request, queryset, call) -> None:
        for project in queryset.order_by("id"):
            try:
                message = call(project)
            except AppError as exc:
                self.message_user(request, f"{project}: {exc.message}", messages.ERROR)
                continue
            self.message_user(request, f"{project}: {message}", messages.SUCCESS)

    @admin.action(description="Ask for a change to the selected projects")
    def request_change(self, request, queryset):
        form = ChangeRequestForm(request.POST if "confirm" in request.POST else None)
        if not form.is_valid():
            return self._confirm(
                request,
                queryset,
                action="request_change",
                question="Change these projects: what should they also do?",
                verb="Start the change",
                form=form,
            )
        text = form.cleaned_data["description"]

        def call(project: Project) -> str:
            run = services.project_request_change(project_id=project.id, description=text, user=request.user)
            return f"change run #{run.id} started"

        self._each(request, queryset, call)

    @admin.action(description="Redeploy the selected projects (same commit, new release)")
    def redeploy(self, request, queryset):
        if "confirm" not in request.POST:
            return self._confirm(
                request,
                queryset,
                action="redeploy",
                question="Deploy these projects' live commit again as a new release?",
                verb="Redeploy",
            )

        def call(project: Project) -> str:
            run = services.project_redeploy(project_id=project.id, user=request.user)
            return f"redeploy run #{run.id} started"

        self._each(request, queryset, call)

    @admin.action(description="Stop the selected projects' releases")
    def stop_releases(self, request, queryset):
        if "confirm" not in request.POST:
            return self._confirm(
                request,
                queryset,
                action="stop_releases",
                question="Stop these projects' releases and remove their routes? They stop answering until started.",
                verb="Stop",
            )

        def call(project: Project) -> str:
            services.project_check_idle(project_id=project.id)
            stopped = releases.project_stop(project=project)
            return f"stopped releases {stopped}" if stopped else "nothing was running"

        self._each(request, queryset, call)

    @admin.action(description="Start the selected projects' last release again")
    def start_release(self, request, queryset):
        if "confirm" not in request.POST:
            return self._confirm(
                request,
                queryset,
                action="start_release",
                question="Start these projects' last release again?",
                verb="Start",
            )

        def call(project: Project) -> str:
            services.project_check_idle(project_id=project.id)
            started = releases.project_start(project=project)
            return f"release {started.id} is live at {started.url}"

        self._each(request, queryset, call)

    @admin.action(description="Roll the selected projects back to an earlier release")
    def roll_back(self, request, queryset):
        form = RollbackForm(request.POST if "confirm" in request.POST else None)
        if not form.is_valid():
            return self._confirm(
                request,
                queryset,
                action="roll_back",
                question="Roll these projects back? The live release stops and an earlier kept one serves.",
                verb="Roll back",
                form=form,
            )
        release = form.cleaned_data.get("release")

        def call(project: Project) -> str:
            services.project_check_idle(project_id=project.id)
            restored = releases.rollback_by_hand(project=project, to_deployment_id=release)
            return f"release {restored.id} serves again"

        self._each(request, queryset, call)

    def delete_model(self, request, obj: Project) -> None:
        maintenance.project_teardown(project_id=obj.id)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        for project_id in queryset.values_list("id", flat=True):
            maintenance.project_teardown(project_id=project_id)
        super().delete_queryset(request, queryset)


# --- Releases: their output, read through the target that runs them ----------------------------
# Registered over projects' own DeploymentAdmin (projects may not import the engine).
admin.site.unregister(Deployment)


@admin.register(Deployment)
class ReleaseAdmin(DeploymentAdmin):
    readonly_fields = ["output_tail", *DeploymentAdmin.readonly_fields]

    @admin.display(description="output (last lines, secret values redacted)")
    def output_tail(self, obj: Deployment):
        if obj.target in ("", "local") and not obj.release_dir:
            return "No release directory: the release never started."
        try:
            text = target_for(obj).log_tail(deployment_id=obj.id, release_dir=Path(obj.release_dir), limit=6000)
        except AppError as exc:
            return f"The release's output could not be read: {exc.message}"
        if not text:
            return "No output (the release printed nothing, or its output is gone)."
        redaction.load_project(obj.project_id)
        return format_html('<pre class="release-log" style="white-space:pre-wrap">{}</pre>', redaction.redact(text))
