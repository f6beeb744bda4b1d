"""Admin for projects, runs, releases and incidents: the rows the system makes, shown to be read
and acted on (the operator's console; the overview page is orchestrator/console.py).

Nothing here is added by hand: projects, runs, releases and incidents are created by the
services, so they get no Add form; their pages are read-only (no Save), and actions go
through the services with a confirmation first and one message per row saying what happened.
"""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import OuterRef, Subquery, Sum
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from config import logfile
from config.errors import AppError
from projects import charts, notifications, people, runs
from projects import services as project_services
from projects.models import (
    Deployment,
    Incident,
    IncidentEvent,
    Invite,
    OutboundMessage,
    PipelineRun,
    Project,
    RunEvent,
    StageRun,
    TelegramAccount,
)
from secrets_meta import redaction


def age(value) -> str:
    """How long ago, to the minute ("3 hours, 4 minutes"); the exact time is in the tooltip."""
    if value is None:
        return "-"
    return format_html('<span title="{}">{} ago</span>', value.isoformat(timespec="seconds"), timesince(value))


def status_badge(status: str, label: str | None = None):
    return format_html(
        '<span style="display:inline-block;padding:1px 6px;border-radius:3px;color:#fff;background:{}">{}</span>',
        charts.colour(status),
        label or status,
    )


def confirm(modeladmin, request, queryset, *, action: str, question: str, verb: str, form=None):
    """The page asking to confirm an action on the selected rows; posting it runs the action again
    with ``confirm`` set."""
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": verb,
        "question": question,
        "objects": list(queryset),
        "action": action,
        "verb": verb,
        "form": form,
        "opts": modeladmin.model._meta,
    }
    return TemplateResponse(request, "admin/factory_confirm.html", context)


def report_each(modeladmin, request, rows, call) -> None:
    """Run ``call`` on each row; one message per row: what happened, or the service's refusal."""
    for row in rows:
        try:
            message = call(row)
        except AppError as exc:
            modeladmin.message_user(request, f"{row}: {exc.message}", messages.ERROR)
            continue
        modeladmin.message_user(request, f"{row}: {message}", messages.SUCCESS)


class ReadOnlyInline(admin.TabularInline):
    """Rows the system writes: shown, never added, changed or deleted here."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class RunInline(ReadOnlyInline):
    model = PipelineRun
    show_change_link = True
    fields = ["id", "kind", "status", "current_stage", "iteration", "cost_usd", "created_at", "finished_at"]
    readonly_fields = fields
    ordering = ["-created_at"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "name",
        "kind",
        "owner",
        "latest_run",
        "live_url",
        "ci_status",
        "cost",
        "age",
        "created_at",
        "deleted_at",
    ]
    list_display_links = ["id", "name"]
    list_filter = ["kind", ("deleted_at", admin.EmptyFieldListFilter), "created_at", "own_bot"]
    search_fields = ["name", "slug", "description", "owner__username", "repo_url"]
    ordering = ["-created_at"]
    list_select_related = ["owner"]
    readonly_fields = [
        "owner",
        "name",
        "slug",
        "kind",
        "description",
        "own_bot",
        "spec",
        "repo_url",
        "pull_request_url",
        "pull_request_number",
        "ci_status",
        "ci_updated_at",
        "live_url",
        "created_at",
        "updated_at",
        "deleted_at",
    ]
    fields = readonly_fields
    inlines = [RunInline]

    def get_queryset(self, request):
        live = Deployment.objects.filter(project=OuterRef("pk"), status=Deployment.Status.LIVE).values("url")[:1]
        latest = PipelineRun.objects.filter(project=OuterRef("pk")).order_by("-created_at")
        return (
            super()
            .get_queryset(request)
            .annotate(
                total_cost=Sum("usage__cost_usd"),
                live_release_url=Subquery(live),
                latest_run_id=Subquery(latest.values("id")[:1]),
                latest_run_status=Subquery(latest.values("status")[:1]),
            )
        )

    def has_add_permission(self, request) -> bool:
        return False  # a project is made from a description (API, chat, demo), never here

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # nothing on a project is edited by hand; the actions change it

    @admin.display(description="cost (USD)", ordering="total_cost")
    def cost(self, obj: Project):
        return f"{obj.total_cost or 0:.4f}"

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: Project):
        return age(obj.created_at)

    @admin.display(description="live at")
    def live_url(self, obj: Project):
        url = getattr(obj, "live_release_url", None)
        if url is None:
            url = obj.deployments.filter(status=Deployment.Status.LIVE).values_list("url", flat=True).first()
        return format_html('<a href="{}">{}</a>', url, url) if url else "-"

    @admin.display(description="latest run")
    def latest_run(self, obj: Project):
        if not getattr(obj, "latest_run_id", None):
            return "-"
        link = reverse("admin:projects_pipelinerun_change", args=[obj.latest_run_id])
        return format_html('<a href="{}">#{}</a> {}', link, obj.latest_run_id, status_badge(obj.latest_run_status))

    def get_deleted_objects(self, objs, request):
        """The delete confirmation (one project or several) says first which are live: deleting
        one stops its releases, and its URL stops answering."""
        if request.POST.get("post") != "yes":  # the confirmation page, not the confirmed delete
            ids = [obj.pk for obj in objs]
            live = Deployment.objects.filter(project_id__in=ids, status=Deployment.Status.LIVE)
            live = live.select_related("project")
            for release in live:
                self.message_user(
                    request,
                    f"{release.project} is live at {release.url} (release {release.id}): deleting it stops its "
                    "releases, removes its route, ends its workers and gives its bot back.",
                    messages.WARNING,
                )
        deleted, counts, _, protected = super().get_deleted_objects(objs, request)
        # Its runs, releases, workers and ledger go with it: none is deleted alone here (they
        # refuse deletion on their own pages), but the project's deletion is the operator's.
        return deleted, counts, set(), protected


class StageRunInline(ReadOnlyInline):
    model = StageRun
    fields = ["stage", "iteration", "status", "attempt", "started_at", "finished_at", "duration", "error"]
    readonly_fields = fields

    @admin.display(description="seconds")
    def duration(self, obj: StageRun):
        seconds = obj.duration_seconds
        return f"{seconds:.1f}" if seconds is not None else "-"


class RunEventInline(ReadOnlyInline):
    model = RunEvent
    fields = ["created_at", "type", "stage", "payload"]
    readonly_fields = fields


ITERATED = ("developer", "tester")


def run_timeline(run: PipelineRun):
    """The run's stage runs as bars on a time axis: one row per stage and iteration."""
    rows = list(run.stages.order_by("iteration", "id"))
    bars = [
        charts.Bar(
            label=f"{row.stage} #{row.iteration}" if row.iteration > 1 or row.stage in ITERATED else row.stage,
            status=row.status,
            start=row.started_at,
            end=row.finished_at if row.finished_at or row.status != StageRun.Status.RUNNING else None,
            group=row.iteration,
            title=(
                f"{row.stage}, iteration {row.iteration}, attempt {row.attempt}: {row.status}"
                + (f" — {row.error[:200]}" if row.error else "")
            ),
        )
        for row in rows
    ]
    return charts.timeline(bars, now=run.finished_at or timezone.now())


@admin.register(PipelineRun)
class PipelineRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "owner",
        "kind",
        "status_badge",
        "current_stage",
        "iteration",
        "cost_usd",
        "age",
        "took",
        "created_at",
    ]
    list_filter = ["status", "kind", "current_stage", "created_at"]
    search_fields = ["=id", "project__name", "project__slug", "project__owner__username", "error_message", "request"]
    list_select_related = ["project__owner"]
    ordering = ["-created_at"]
    readonly_fields = ["timeline", *[f.name for f in PipelineRun._meta.fields], "log_lines"]
    fieldsets = [
        ("Stages on a time axis", {"fields": ["timeline"]}),
        (None, {"fields": [f.name for f in PipelineRun._meta.fields]}),
        ("Log lines of this run (LOG_FILE, found by run_id)", {"fields": ["log_lines"], "classes": ["collapse"]}),
    ]
    inlines = [StageRunInline, RunEventInline]
    actions = ["cancel_runs", "rerun"]

    def has_add_permission(self, request) -> bool:
        return False  # runs are started by the services (a project, a change, a redeploy)

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the state machine changes runs; cancel and rerun are actions

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # history: delete the project instead

    @admin.display(description="owner", ordering="project__owner__username")
    def owner(self, obj: PipelineRun):
        return obj.project.owner

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: PipelineRun):
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: PipelineRun):
        return age(obj.created_at)

    @admin.display(description="took")
    def took(self, obj: PipelineRun):
        end = obj.finished_at or (timezone.now() if not obj.is_finished else None)
        return charts.duration_text((end - obj.created_at).total_seconds()) if end else "-"

    @admin.display(description="timeline")
    def timeline(self, obj: PipelineRun):
        return run_timeline(obj)

    @admin.display(description="log lines")
    def log_lines(self, obj: PipelineRun):
        if not settings.LOG_FILE:
            return "No log file: set LOG_FILE to have every process append its lines as JSON (README)."
        lines = logfile.run_lines(obj.id)
        if not lines:
            return f"No line with run_id {obj.id} in the last part of {settings.LOG_FILE}."
        redaction.load_project(obj.project_id)
        shown = []
        for line in lines:
            rest = {k: v for k, v in line.items() if k not in ("timestamp", "level", "event", "run_id", "logger")}
            text = " ".join(f"{k}={v}" for k, v in rest.items())
            shown.append(
                (
                    str(line.get("timestamp", ""))[:19].replace("T", " "),
                    str(line.get("level", "")),
                    str(line.get("event", "")),
                    redaction.redact(text),
                )
            )
        rows = format_html_join("\n", "{} {:<8} {} {}", shown)
        return format_html(
            '<pre class="run-log" style="white-space:pre-wrap;max-height:30em;overflow:auto">{}</pre>', rows
        )

    @admin.action(description="Cancel the selected runs")
    def cancel_runs(self, request, queryset):
        if "confirm" not in request.POST:
            return confirm(
                self,
                request,
                queryset.order_by("id"),
                action="cancel_runs",
                question="Cancel these runs? Their stages stop and their people are told.",
                verb="Cancel the runs",
            )

        def call(run: PipelineRun) -> str:
            cancelled = runs.run_cancel(run_id=run.id, user=request.user)
            return f"cancelled ({cancelled.error_message})"

        report_each(self, request, queryset.order_by("id"), call)

    @admin.action(description="Run the selected finished runs again (a new run of the same kind)")
    def rerun(self, request, queryset):
        if "confirm" not in request.POST:
            return confirm(
                self,
                request,
                queryset.order_by("id"),
                action="rerun",
                question="Start each of these finished runs again, as a new run of the same kind and request?",
                verb="Run again",
            )

        def call(run: PipelineRun) -> str:
            if not run.is_finished:
                return f"still {run.status}: nothing to run again (cancel it first)"
            if run.kind == PipelineRun.Kind.CHANGE:
                new = project_services.project_request_change(
                    project_id=run.project_id, description=run.request, user=request.user
                )
            elif run.kind == PipelineRun.Kind.REDEPLOY:
                new = project_services.project_redeploy(project_id=run.project_id, user=request.user)
            else:
                with transaction.atomic():
                    new = runs.run_create(project=run.project, kind=run.kind)
            link = reverse("admin:projects_pipelinerun_change", args=[new.id])
            return format_html('run <a href="{}">#{}</a> started', link, new.id)

        report_each(self, request, queryset.order_by("id").select_related("project"), call)


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    """Releases: started, checked, swapped and stopped by the engine; read here."""

    list_display = [
        "id",
        "project",
        "run",
        "status_badge",
        "link",
        "short_commit",
        "target",
        "probe",
        "restarts",
        "live_at",
        "stopped_at",
    ]
    list_filter = ["status", "target", "probe_ok", "live_at", "created_at"]
    search_fields = ["=id", "project__name", "project__slug", "commit_sha", "url"]
    list_select_related = ["project", "run"]
    ordering = ["-created_at"]
    readonly_fields = [f.name for f in Deployment._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # a row may stand for a running release: stop it through its project

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Deployment):
        return status_badge(obj.status)

    @admin.display(description="URL", ordering="url")
    def link(self, obj: Deployment):
        return format_html('<a href="{}">{}</a>', obj.url, obj.url) if obj.url else "-"

    @admin.display(description="commit", ordering="commit_sha")
    def short_commit(self, obj: Deployment):
        return format_html('<code title="{}">{}</code>', obj.commit_sha, obj.commit_sha[:10])

    @admin.display(description="last probe", ordering="probed_at")
    def probe(self, obj: Deployment):
        if obj.probed_at is None:
            return "-"
        verdict = "ok" if obj.probe_ok else "down"
        return format_html(
            '<span title="{}">{} {} ms</span>', obj.probe_detail or "", verdict, obj.probe_ms if obj.probe_ms else "?"
        )


class IncidentEventInline(ReadOnlyInline):
    model = IncidentEvent
    fields = ["type", "detail", "created_at"]
    readonly_fields = fields


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    """Outages of live releases and their steps: read-only (the probe and the repair write them)."""

    list_display = ["id", "project", "deployment", "status_badge", "reason", "restarts", "detected_at", "ended_at"]
    list_filter = ["status", "detected_at"]
    search_fields = ["=id", "project__name", "project__slug", "reason"]
    list_select_related = ["project", "deployment"]
    ordering = ["-detected_at"]
    readonly_fields = [f.name for f in Incident._meta.fields]
    inlines = [IncidentEventInline]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Incident):
        return status_badge(obj.status)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- people in Telegram and the messages they are sent ----------------------------------
class TelegramAccountForm(forms.ModelForm):
    class Meta:
        model = TelegramAccount
        fields = ["user", "telegram_user_id", "chat_id", "username"]


@admin.register(TelegramAccount)
class TelegramAccountAdmin(admin.ModelAdmin):
    """Operators let a Telegram user in here (linking their id to a user); saving calls the service."""

    form = TelegramAccountForm
    list_display = ["telegram_user_id", "username", "user", "chat_id", "blocked_at", "created_at"]
    list_filter = [("blocked_at", admin.EmptyFieldListFilter)]
    search_fields = ["telegram_user_id", "username", "user__username"]
    actions = ["unblock"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # made by its form (or the system); nothing on it is edited by hand

    def get_readonly_fields(self, request, obj=None):
        return (
            []
            if obj is None
            else ["user", "telegram_user_id", "chat_id", "username", "blocked_at", "blocked_reason", "created_at"]
        )

    def save_model(self, request, obj, form, change):
        if change:
            return  # nothing on an existing link is edited by hand
        account = people.account_link(
            user=form.cleaned_data["user"],
            telegram_user_id=obj.telegram_user_id,
            chat_id=obj.chat_id,
            username=obj.username,
        )
        obj.pk, obj.created_at = account.pk, account.created_at

    @admin.action(description="Allow messages again (the person unblocked the bot)")
    def unblock(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        for account_id in ids:
            people.account_unblock(account_id=account_id)
        messages.info(request, f"{len(ids)} account(s) unblocked.")


class InviteForm(forms.ModelForm):
    """An invite is made by the service: for an existing person, or for a new one (no user)."""

    valid_for_days = forms.IntegerField(min_value=1, max_value=365, initial=7)

    class Meta:
        model = Invite
        fields = ["user"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["user"].queryset = get_user_model().objects.filter(telegram__isnull=True)
        self.fields["user"].required = False
        self.fields["user"].help_text = "Empty: redeeming the code creates a new user."


@admin.register(Invite)
class InviteAdmin(admin.ModelAdmin):
    list_display = ["code_hint", "user", "created_by", "expires_at", "redeemed_at", "redeemed_by"]
    list_filter = [("redeemed_at", admin.EmptyFieldListFilter)]
    search_fields = ["user__username"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # made by its form (or the system); nothing on it is edited by hand

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = InviteForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ["user", "valid_for_days"] if obj is None else self.get_readonly_fields(request, obj)

    def get_readonly_fields(self, request, obj=None):
        return (
            []
            if obj is None
            else ["start_command", "user", "created_by", "expires_at", "redeemed_at", "redeemed_by", "created_at"]
        )

    def save_model(self, request, obj, form, change):
        if change:
            return
        try:
            invite = people.invite_create(
                created_by=request.user,
                user=form.cleaned_data.get("user"),
                ttl_seconds=form.cleaned_data["valid_for_days"] * 24 * 3600,
            )
        except AppError as exc:
            messages.error(request, exc.message)
            return
        obj.pk, obj.code, obj.expires_at, obj.created_at = invite.pk, invite.code, invite.expires_at, invite.created_at
        messages.success(request, f"Invite created. The person sends the bot: /start {invite.code}")

    @admin.display(description="code")
    def code_hint(self, obj: Invite) -> str:
        return f"{obj.code[:6]}…"

    @admin.display(description="send the bot")
    def start_command(self, obj: Invite) -> str:
        return format_html("<code>/start {}</code>", obj.code)


@admin.register(OutboundMessage)
class OutboundMessageAdmin(admin.ModelAdmin):
    list_display = ["id", "account", "chat_id", "run", "status", "attempts", "short_text", "created_at", "sent_at"]
    list_filter = ["status", "html", "created_at"]
    search_fields = ["text", "account__username", "account__user__username"]
    readonly_fields = [f.name for f in OutboundMessage._meta.fields]
    actions = ["resend"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the outbox is written by the system; "resend" is an action

    @admin.display(description="text")
    def short_text(self, obj: OutboundMessage) -> str:
        return obj.text if len(obj.text) <= 80 else obj.text[:79] + "…"

    @admin.action(description="Send the selected failed messages again")
    def resend(self, request, queryset):
        count = sum(notifications.message_resend(message_id=m) for m in queryset.values_list("id", flat=True))
        messages.info(request, f"{count} message(s) queued again.")
