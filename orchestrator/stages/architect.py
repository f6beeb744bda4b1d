"""Architect: the description becomes a validated ProjectSpec."""
from __future__ import annotations

from agents import services as agent_services
from agents.backends import get_backend
from agents.models import Role
from config.errors import PermanentError
from orchestrator.stages import Outcome, StageContext, StageFailed
from projects import services as project_services


def run(ctx: StageContext) -> Outcome:
    config = agent_services.agent_config_for(role=Role.ARCHITECT)
    try:
        backend = get_backend(config)
        spec = backend.architect(ctx.project.description)
    except PermanentError as exc:
        raise StageFailed(exc.message, code=exc.code) from exc
    project = project_services.project_set_spec(project_id=ctx.project.id, spec=spec)
    agent_services.usage_record(project_id=project.id, stage_run_id=ctx.stage_run.id, session_id=None,
                                role=Role.ARCHITECT, backend=backend.name, model=config.model or backend.name)
    return Outcome({"spec": project.spec})
