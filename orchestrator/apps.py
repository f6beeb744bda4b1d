from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    """The engine. An app only so that its management commands (demo) are found; no models."""

    name = "orchestrator"
