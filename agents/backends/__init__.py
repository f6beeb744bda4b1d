"""Agent backends: one protocol, chosen per role by AgentConfig.backend."""

from __future__ import annotations

from agents.backends.base import AgentBackend, AgentTurn, ArchitectResult, DevelopTask, TurnUsage, parse_agent_result
from agents.models import AgentConfig, Backend
from config.errors import PermanentError


def get_backend(config: AgentConfig) -> AgentBackend:
    if config.backend == Backend.SCRIPTED:
        from agents.backends.scripted import ScriptedBackend

        return ScriptedBackend(config)
    if config.backend == Backend.CLAUDE_CODE:
        from agents.backends.claude_code import ClaudeCodeBackend

        return ClaudeCodeBackend(config)
    if config.backend == Backend.OPENAI_COMPATIBLE:
        from agents.backends.openai_compatible import OpenAICompatibleBackend

        return OpenAICompatibleBackend(config)
    raise PermanentError(
        f"There is no agent backend {config.backend!r}; set the {config.role} role's backend to one of "
        f"{', '.join(Backend.values)} in admin (Agent configs).",
        code="backend_not_available",
    )


__all__ = [
    "AgentBackend",
    "AgentTurn",
    "ArchitectResult",
    "DevelopTask",
    "TurnUsage",
    "get_backend",
    "parse_agent_result",
]
