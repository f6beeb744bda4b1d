from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class OrchestratorConfig(AppConfig):
    """The engine. An app only so that its management commands (demo) are found; no models."""

    name = "orchestrator"


class FactoryAdminConfig(admin_apps.AdminConfig):
    """Django's admin with the operator's console as its default site (orchestrator/console.py):
    the overview page and the link to Flower; every app's admin.py registers on it as usual.
    Listed in INSTALLED_APPS by its path, in place of ``django.contrib.admin``."""

    default = False  # not the config of the "orchestrator" entry
    default_site = "orchestrator.console.FactoryAdminSite"
