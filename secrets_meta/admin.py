"""Admin for secrets: metadata to read, a write-only value field that goes through the services
(a value is never shown: the field is a password input that renders empty), and the audit."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from config.errors import AppError
from secrets_meta import services
from secrets_meta.models import SecretAudit, SecretMeta


class SecretMetaForm(forms.ModelForm):
    value = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: a new value replaces the stored one; leave empty to keep it. Never shown.",
    )

    class Meta:
        model = SecretMeta
        fields = ["project", "key", "kind"]

    def clean(self):
        data = super().clean()
        key = self.instance.key if self.instance.pk else data.get("key")
        value = data.get("value")
        if not self.instance.pk and not value:
            self.add_error("value", "A new secret needs a value.")
        elif value and key:
            try:
                services.validate_value(key, value)
            except AppError as exc:
                self.add_error("value", exc.message)
        if not self.instance.pk and key:
            try:
                services.validate_key(key)
            except AppError as exc:
                self.add_error("key", exc.message)
        return data


@admin.register(SecretMeta)
class SecretMetaAdmin(admin.ModelAdmin):
    form = SecretMetaForm
    list_display = ["project", "key", "kind", "filled", "length", "store", "synced_at", "updated_at"]
    list_filter = ["kind", "filled", "store"]
    search_fields = ["key", "project__name", "project__slug"]
    actions = ["forget_values"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["project", "key", "kind", "value"]
        return ["project", "key", "kind", "filled", "length", "store", "synced_at", "created_by", "updated_at", "value"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["project", "key", "kind", "filled", "length", "store", "synced_at", "created_by", "updated_at"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the audit would go with the row: "forget the values" keeps both

    def save_model(self, request, obj, form, change):
        """Through the service, never the ORM: an add or a change without a value does nothing."""
        value = form.cleaned_data.get("value")
        if not value:
            return
        meta = services.secret_put(
            project_id=obj.project_id,
            key=obj.key,
            value=value,
            actor=f"user:{request.user.id}",
            kind=obj.kind or SecretMeta.Kind.USER,
        )
        obj.pk, obj.id = meta.pk, meta.id

    def save_related(self, request, form, formsets, change):
        """No related objects are edited here."""

    @admin.action(description="Forget the selected secrets' values")
    def forget_values(self, request, queryset):
        count = 0
        for project_id, key in queryset.values_list("project_id", "key"):
            try:
                services.secret_delete(project_id=project_id, key=key, actor=f"user:{request.user.id}")
                count += 1
            except AppError as exc:
                self.message_user(request, exc.message, messages.ERROR)
        self.message_user(request, f"{count} value(s) forgotten.")


@admin.register(SecretAudit)
class SecretAuditAdmin(admin.ModelAdmin):
    list_display = ["created_at", "secret", "bot_token", "action", "actor", "detail"]
    list_filter = ["action"]
    search_fields = ["secret__key", "actor"]
    readonly_fields = [f.name for f in SecretAudit._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
