from django.contrib import admin
from django.db.models import Sum

from projects.models import Deployment, Incident, IncidentEvent, PipelineRun, Project, RunEvent, StageRun


class RunInline(admin.TabularInline):
    model = PipelineRun
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["id", "kind", "status", "current_stage", "iteration", "cost_usd", "created_at", "finished_at"]
    readonly_fields = fields


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "slug", "kind", "owner", "cost", "created_at", "deleted_at"]
    list_filter = ["kind", ("deleted_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "slug", "description", "owner__username"]
    readonly_fields = ["owner", "name", "slug", "kind", "spec", "repo_url", "created_at", "updated_at", "deleted_at"]
    inlines = [RunInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(total_cost=Sum("usage__cost_usd"))

    @admin.display(description="cost (USD)", ordering="total_cost")
    def cost(self, obj: Project):
        return obj.total_cost or 0


class StageRunInline(admin.TabularInline):
    model = StageRun
    extra = 0
    can_delete = False
    fields = ["stage", "iteration", "status", "attempt", "started_at", "finished_at", "duration", "error"]
    readonly_fields = fields

    @admin.display(description="seconds")
    def duration(self, obj: StageRun):
        seconds = obj.duration_seconds
        return f"{seconds:.1f}" if seconds is not None else "-"


class RunEventInline(admin.TabularInline):
    model = RunEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "type", "stage", "payload"]
    readonly_fields = fields


@admin.register(PipelineRun)
class PipelineRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "status", "current_stage", "iteration", "cost_usd", "created_at"]
    list_filter = ["status", "kind", "current_stage"]
    search_fields = ["project__name", "project__slug"]
    readonly_fields = [f.name for f in PipelineRun._meta.fields]
    inlines = [StageRunInline, RunEventInline]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "run", "status", "url", "commit_sha", "live_at", "stopped_at"]
    list_filter = ["status", "target"]
    readonly_fields = [f.name for f in Deployment._meta.fields]


class IncidentEventInline(admin.TabularInline):
    model = IncidentEvent
    extra = 0
    can_delete = False
    fields = ["type", "detail", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    """Outages of live releases and their steps: read-only (the probe and the repair write them)."""

    list_display = ["id", "project", "deployment", "status", "reason", "restarts", "detected_at", "ended_at"]
    list_filter = ["status"]
    search_fields = ["project__name", "project__slug", "reason"]
    readonly_fields = [f.name for f in Incident._meta.fields]
    inlines = [IncidentEventInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- people in Telegram and the messages they are sent ----------------------------------
from django import forms  # noqa: E402
from django.contrib import messages  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.utils.html import format_html  # noqa: E402

from config.errors import AppError  # noqa: E402
from projects import notifications, people  # noqa: E402
from projects.models import Invite, OutboundMessage, TelegramAccount  # noqa: E402


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
    list_filter = ["status", "html"]
    search_fields = ["text", "account__username", "account__user__username"]
    readonly_fields = [f.name for f in OutboundMessage._meta.fields]
    actions = ["resend"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="text")
    def short_text(self, obj: OutboundMessage) -> str:
        return obj.text if len(obj.text) <= 80 else obj.text[:79] + "…"

    @admin.action(description="Send the selected failed messages again")
    def resend(self, request, queryset):
        count = sum(notifications.message_resend(message_id=m) for m in queryset.values_list("id", flat=True))
        messages.info(request, f"{count} message(s) queued again.")
