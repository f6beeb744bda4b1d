"""State changes of agent configs, worker sessions and the usage ledger."""
from __future__ import annotations

import socket
from decimal import Decimal

import structlog
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from agents.models import AgentConfig, Role, Usage, WorkerSession
from config.errors import Conflict, ValidationFailed
from projects.models import PipelineRun, StageRun

log = structlog.get_logger(__name__)


def agent_config_for(*, role: str) -> AgentConfig:
    """The role's config; a missing one is created with the defaults (scripted backend)."""
    config, _ = AgentConfig.objects.get_or_create(role=role)
    return config


def current_node() -> str:
    return socket.gethostname()


@transaction.atomic
def session_create(*, project_id: int, run_id: int | None, role: str, runtime: str, workspace_root: str) -> WorkerSession:
    """Record a worker before it exists, so a crash mid-start leaves a row the reaper can find.

    Each session gets a workspace of its own under ``workspace_root``: a replacement worker never
    inherits the half-written files (or git locks) of the one it replaces.
    """
    try:
        with transaction.atomic():
            session = WorkerSession.objects.create(
                project_id=project_id, run_id=run_id, role=role, runtime=runtime,
                state=WorkerSession.State.STARTING, state_reason="created", state_changed_at=timezone.now(),
                last_activity_at=timezone.now(), owner_node=current_node(),
            )
    except IntegrityError as exc:
        raise Conflict(f"Project {project_id} already has a live {role} worker.", code="worker_exists") from exc
    session.workspace = f"{workspace_root.rstrip('/')}/session-{session.id}"
    WorkerSession.objects.filter(id=session.id).update(workspace=session.workspace)
    return session


@transaction.atomic
def agent_config_set(*, role: str, **fields) -> AgentConfig:
    """Change a role's config (backend, model, options, limits); unknown fields are refused."""
    config = agent_config_for(role=role)
    allowed = {f.name for f in AgentConfig._meta.fields} - {"id", "role", "updated_at"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationFailed(f"AgentConfig has no field(s) {', '.join(sorted(unknown))}.", code="unknown_field")
    for name, value in fields.items():
        setattr(config, name, value)
    config.full_clean()
    config.save()
    return config


def session_set_state(*, session_id: int, state: str, reason: str, container_id: str | None = None,
                      expect: tuple[str, ...] | None = None) -> bool:
    """Move a session to ``state``; with ``expect``, only from one of those states."""
    now = timezone.now()
    fields: dict = {"state": state, "state_reason": reason[:200], "state_changed_at": now, "last_activity_at": now}
    if container_id is not None:
        fields["container_id"] = container_id
    if state in (WorkerSession.State.TERMINATED, WorkerSession.State.FAILED):
        fields["terminated_at"] = now
    qs = WorkerSession.objects.filter(id=session_id)
    if expect is not None:
        qs = qs.filter(state__in=expect)
    changed = bool(qs.update(**fields))
    if changed:
        log.info("worker_state", session_id=session_id, state=state, reason=reason)
    return changed


def session_attach_run(*, session_id: int, run_id: int) -> None:
    WorkerSession.objects.filter(id=session_id).update(run_id=run_id, last_activity_at=timezone.now())


@transaction.atomic
def usage_record(*, project_id: int, stage_run_id: int | None, session_id: int | None, role: str, backend: str,
                 model: str = "", input_tokens: int = 0, output_tokens: int = 0, cache_read_tokens: int = 0,
                 cache_write_tokens: int = 0, cost_usd: Decimal | float | str = 0) -> Usage:
    """One agent turn's tokens and dollars; the run's running cost moves with it."""
    cost = Decimal(str(cost_usd))
    usage = Usage.objects.create(
        project_id=project_id, stage_run_id=stage_run_id, session_id=session_id, role=role, backend=backend,
        model=model, input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens, cost_usd=cost,
    )
    if stage_run_id is not None and cost:
        run_id = StageRun.objects.filter(id=stage_run_id).values_list("run_id", flat=True).first()
        PipelineRun.objects.filter(id=run_id).update(cost_usd=F("cost_usd") + cost)
    return usage


__all__ = ["Role", "agent_config_for", "session_create", "session_set_state", "usage_record"]
