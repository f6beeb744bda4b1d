"""Architect: the description becomes a validated ProjectSpec."""

from __future__ import annotations

from agents import services as agent_services
from agents.backends import get_backend
from agents.models import Role
from config.errors import PermanentError
from orchestrator.stages import Outcome, StageContext, StageFailed
from projects import services


def run(ctx: StageContext) -> Outcome:
    config = agent_services.agent_config_for(role=Role.ARCHITECT)
    try:
        backend = get_backend(config)
        answer = backend.architect(ctx.project.description)
    except PermanentError as exc:
        raise StageFailed(exc.message, code=exc.code) from exc
    u = answer.usage
    # Recorded before anything else: the turn cost money whether or not the spec is usable.
    agent_services.usage_record(
        project_id=ctx.project.id,
        stage_run_id=ctx.stage_run.id,
        stage_attempt=ctx.stage_run.attempt,
        session_id=None,
        role=Role.ARCHITECT,
        backend=backend.name,
        model=u.model or config.model or backend.name,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read_tokens,
        cache_write_tokens=u.cache_write_tokens,
        cost_usd=u.cost_usd,
    )
    project = services.project_set_spec(project_id=ctx.project.id, spec=answer.spec)
    return Outcome({"spec": project.spec})
