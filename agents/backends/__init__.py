"""Agent backends: one protocol, chosen per role by AgentConfig.backend."""
from __future__ import annotations

from agents.backends.base import AgentBackend, AgentTurn, DevelopTask, TurnUsage, parse_agent_result
from agents.models import AgentConfig, Backend
from config.errors import PermanentError


def get_backend(config: AgentConfig) -> AgentBackend:
    if config.backend == Backend.SCRIPTED:
        from agents.backends.scripted import ScriptedBackend

        return ScriptedBackend(config)
    raise PermanentError(
        f"The {config.get_backend_display()} backend is not built yet; set the {config.role} role's backend "
        f"to 'scripted' in admin (Agent configs).",
        code="backend_not_available",
    )


__all__ = ["AgentBackend", "AgentTurn", "DevelopTask", "TurnUsage", "get_backend", "parse_agent_result"]
