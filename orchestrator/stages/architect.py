"""Architect: the description becomes a validated ProjectSpec.

By the run's kind:
- ``create``: the project's description is planned from scratch.
- ``change``: the project's spec is amended with what the person asked (``run.request``): a
  backend with ``amend`` (the scripted one) adds what it understands or refuses; an LLM backend is
  given the current spec and the change and answers the whole amended spec. Name, slug and kind
  stay as they are (the URL, the repository and the bot do not move).
- ``redeploy``: nothing to plan; the spec is kept (recorded as reused, no agent turn).
"""

from __future__ import annotations

import json

from agents import services as agent_services
from agents.backends import get_backend
from agents.models import Role
from config.errors import PermanentError
from orchestrator.stages import Outcome, StageContext, StageFailed
from projects import services
from projects.models import PipelineRun
from projects.specs import ProjectSpec

CHANGE_PROMPT = """This is a change to a project that is already live. Here is its current specification (JSON):
{spec}

The person asks for this change:
{change}

Answer with the whole amended specification. Keep name, slug and kind exactly as they are, and keep
every existing feature, acceptance check and conversation check unless the change asks to remove
it; add the features the change asks for, each with its checks."""


def change_prompt(spec: ProjectSpec, change: str) -> str:
    """What an LLM architect is told about a change: the spec as it is, and the person's words."""
    return CHANGE_PROMPT.format(spec=json.dumps(spec.model_dump(mode="json"), indent=2), change=change)


def run(ctx: StageContext) -> Outcome:
    kind = ctx.run.kind
    if kind == PipelineRun.Kind.REDEPLOY:
        if not ctx.project.spec:
            raise StageFailed("The project has no plan to redeploy.", code="not_planned")
        return Outcome({"spec": ctx.project.spec, "reused": True})
    config = agent_services.agent_config_for(role=Role.ARCHITECT)
    current = ProjectSpec.model_validate(ctx.project.spec) if kind == PipelineRun.Kind.CHANGE else None
    if kind == PipelineRun.Kind.CHANGE and current is None:
        raise StageFailed("The project has no plan to change yet.", code="not_planned")
    try:
        backend = get_backend(config)
        if current is None:
            answer = backend.architect(ctx.project.description)
        elif hasattr(backend, "amend"):
            answer = backend.amend(current, ctx.run.request)
        else:
            answer = backend.architect(change_prompt(current, ctx.run.request))
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
    spec = answer.spec
    if current is not None:
        # The project keeps its name, slug and kind whatever the model answered.
        spec = spec.model_copy(update={"name": current.name, "slug": current.slug, "kind": current.kind})
    project = services.project_set_spec(project_id=ctx.project.id, spec=spec)
    return Outcome({"spec": project.spec} | ({"change": ctx.run.request} if current is not None else {}))
