from django.contrib import admin

from secrets_meta.models import SecretAudit, SecretMeta


@admin.register(SecretMeta)
class SecretMetaAdmin(admin.ModelAdmin):
    list_display = ["project", "key", "kind", "filled", "store", "synced_at"]
    readonly_fields = [f.name for f in SecretMeta._meta.fields]


@admin.register(SecretAudit)
class SecretAuditAdmin(admin.ModelAdmin):
    list_display = ["created_at", "secret", "action", "actor"]
    readonly_fields = [f.name for f in SecretAudit._meta.fields]
