from django.apps import AppConfig


class SecretsMetaConfig(AppConfig):
    name = "secrets_meta"
    verbose_name = "Secrets (metadata)"
    default_auto_field = "django.db.models.BigAutoField"
