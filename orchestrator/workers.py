"""A worker's life, joining the runtime (where it runs) and WorkerSession (the truth about it)."""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from django.conf import settings

from agents import selectors as agent_selectors
from agents import services as agent_services
from agents.models import AgentConfig, WorkerSession
from agents.services import WorkerQuotaExceeded
from orchestrator.runtime import ExecResult, WorkerGone, WorkerRuntime, get_runtime
from orchestrator.runtime.base import INSTANCE_MARKER, SESSION_MARKER, WorkerSpec, factory_instance
from orchestrator.stages import StageFailed

log = structlog.get_logger(__name__)
State = WorkerSession.State


def worker_env(runtime: WorkerRuntime, workspace: Path, session_id: int) -> dict[str, str]:
    """What a worker's commands see: a bare environment, never the factory's own secrets.

    Every process in a worker carries the session's marker and its installation's, so none can
    hide from the reaper (or from a test looking for orphans).
    """
    return {
        SESSION_MARKER: str(session_id),
        INSTANCE_MARKER: factory_instance(),
        # orchestrator-cli lives in the factory's bin/.
        "PATH": f"{runtime.factory_path}/bin:" + os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workspace),
        "LANG": "C.UTF-8",
        "PYTHONPATH": runtime.factory_path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "GIT_AUTHOR_NAME": "Factory Agent",
        "GIT_AUTHOR_EMAIL": "agent@factory.invalid",
        "GIT_COMMITTER_NAME": "Factory Agent",
        "GIT_COMMITTER_EMAIL": "agent@factory.invalid",
        "GIT_TERMINAL_PROMPT": "0",
    }


def _git_remotes() -> Path:
    """The local bare repositories (embedded default) the worker clones from and pushes to."""
    path = Path(settings.FACTORY_HOME) / "git"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runtime_of(session: WorkerSession) -> WorkerRuntime:
    return get_runtime(session.runtime)


def session_acquire(*, project_id: int, run_id: int, role: str, config: AgentConfig | None = None) -> WorkerSession:
    """The project's live worker for this role, resumed; or a new one if it is gone."""
    runtime = get_runtime(config.runtime if config and config.runtime else None)
    existing = WorkerSession.objects.filter(project_id=project_id, role=role, state__in=WorkerSession.LIVE).first()
    if existing is not None:
        if existing.runtime == runtime.name and _resume(runtime, existing):
            agent_services.session_set_state(session_id=existing.id, state=State.RUNNING, reason="resumed")
            agent_services.session_attach_run(session_id=existing.id, run_id=run_id)
            existing.refresh_from_db()
            return existing
        session_terminate(session=existing, reason="worker unreachable; replaced", failed=True)
    session = _create_within_quota(project_id=project_id, run_id=run_id, role=role, runtime=runtime)
    workspace = Path(session.workspace)
    try:
        handle = runtime.create(
            WorkerSpec(
                session_id=session.id,
                workspace=workspace,
                env=worker_env(runtime, workspace, session.id),
                labels={
                    "factory.instance": factory_instance(),
                    "factory.session": str(session.id),
                    "factory.project": str(project_id),
                    "factory.node": session.owner_node,
                },
                cpu_limit=config.cpu_limit if config else None,
                memory_limit_mb=config.memory_limit_mb if config else None,
                shared_dirs=(_git_remotes(),),
            )
        )
    except (OSError, WorkerGone) as exc:
        agent_services.session_set_state(session_id=session.id, state=State.FAILED, reason=f"start failed: {exc}")
        raise StageFailed(f"Could not start a {runtime.name} worker: {exc}", code="worker_start_failed") from exc
    agent_services.session_set_state(session_id=session.id, state=State.RUNNING, reason="started", container_id=handle)
    session.refresh_from_db()
    log.info("worker_started", session_id=session.id, handle=handle, runtime=runtime.name)
    return session


def _create_within_quota(*, project_id: int, run_id: int, role: str, runtime: WorkerRuntime) -> WorkerSession:
    """Record a new session; when the quota is full, end a paused worker that no active work
    needs (``reclaimable_session``) to make room: paused workers are kept only for cheap reuse.
    Still full: WorkerQuotaExceeded, and the stage waits."""
    create = dict(
        project_id=project_id,
        run_id=run_id,
        role=role,
        runtime=runtime.name,
        workspace_root=str(Path(settings.FACTORY_HOME) / "workspaces"),
    )
    try:
        return agent_services.session_create(**create)
    except WorkerQuotaExceeded:
        victim = agent_selectors.reclaimable_session(for_project_id=project_id)
        if victim is None:
            raise
    log.info("worker_reclaimed", session_id=victim.id, for_project=project_id)
    session_terminate(session=victim, reason="reclaimed: the worker quota is full and it was paused")
    return agent_services.session_create(**create)


def _resume(runtime: WorkerRuntime, session: WorkerSession) -> bool:
    """Wake a live worker and prove a command can run in it (a worker started by a process that
    has since died may be alive yet out of reach)."""
    if not session.container_id or not runtime.is_alive(session.container_id):
        return False
    workspace = Path(session.workspace)
    try:
        if session.state == State.PAUSED:
            runtime.unpause(session.container_id)
        probe = runtime.exec(
            session.container_id, ["true"], cwd=workspace, env=worker_env(runtime, workspace, session.id), timeout=10
        )
    except WorkerGone:
        return False
    return probe.ok


def session_exec(
    session: WorkerSession,
    argv: list[str],
    *,
    cwd: Path | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> ExecResult:
    runtime = runtime_of(session)
    workspace = Path(session.workspace)
    try:
        return runtime.exec(
            session.container_id,
            argv,
            cwd=cwd or workspace,
            env={**(env or {}), **worker_env(runtime, workspace, session.id)},
            timeout=timeout or settings.WORKER_EXEC_TIMEOUT,
        )
    except WorkerGone:
        session_terminate(session=session, reason="worker gone", failed=True)
        raise


def session_idle(*, session: WorkerSession, reason: str) -> None:
    """Channel 1, "I stopped": the agent is done for now; pause the worker at once."""
    runtime = runtime_of(session)
    agent_services.session_set_state(
        session_id=session.id, state=State.IDLE, reason=reason, expect=(State.RUNNING, State.STARTING)
    )
    try:
        runtime.pause(session.container_id)
    except WorkerGone:
        agent_services.session_set_state(session_id=session.id, state=State.FAILED, reason="worker gone")
        return
    agent_services.session_set_state(session_id=session.id, state=State.PAUSED, reason=reason, expect=(State.IDLE,))


def session_terminate(*, session: WorkerSession, reason: str, failed: bool = False) -> None:
    runtime = runtime_of(session)
    if session.container_id:
        runtime.terminate(session.container_id)
    agent_services.session_set_state(
        session_id=session.id,
        state=State.FAILED if failed else State.TERMINATED,
        reason=reason,
        expect=WorkerSession.LIVE,
    )


def sessions_terminate_for_project(*, project_id: int, reason: str) -> int:
    sessions = list(WorkerSession.objects.filter(project_id=project_id, state__in=WorkerSession.LIVE))
    for session in sessions:
        session_terminate(session=session, reason=reason)
    return len(sessions)


def workspace_checkout(session: WorkerSession, *, remote: str, branch: str, commit: str | None = None) -> Path:
    """Bring the worker's working copy to ``branch`` (or ``commit``) as pushed to ``remote``.

    Local leftovers of an interrupted attempt are discarded, so a rerun starts from what was
    really pushed.
    """
    repo = Path(session.workspace) / "repo"
    steps: list[list[str]] = []
    if not (repo / ".git").exists():
        steps.append(["git", "clone", "--quiet", remote, str(repo)])
    steps.append(["git", "-C", str(repo), "fetch", "--quiet", "--prune", "origin"])
    if commit:
        steps.append(["git", "-C", str(repo), "checkout", "--quiet", "--force", "--detach", commit])
    else:
        steps.append(["git", "-C", str(repo), "checkout", "--quiet", "--force", "-B", branch, f"origin/{branch}"])
    steps.append(["git", "-C", str(repo), "clean", "--quiet", "-fdx"])
    for argv in steps:
        result = session_exec(session, argv, cwd=Path(session.workspace), timeout=120)
        if not result.ok:
            raise StageFailed(
                f"{' '.join(argv[:4])} failed in the worker: {result.stderr.strip()[-300:]}", code="workspace_failed"
            )
    return repo


def operator_action(*, session_id: int, action: str) -> None:
    """Pause, resume or terminate a worker on an operator's request (admin)."""
    session = WorkerSession.objects.filter(id=session_id, state__in=WorkerSession.LIVE).first()
    if session is None:
        return  # already gone: nothing to do
    runtime = runtime_of(session)
    if action == "terminate":
        session_terminate(session=session, reason="terminated by an operator")
    elif action == "pause" and session.state in (State.RUNNING, State.IDLE):
        session_idle(session=session, reason="paused by an operator")
    elif action == "resume" and session.state == State.PAUSED:
        try:
            runtime.unpause(session.container_id)
        except WorkerGone:
            agent_services.session_set_state(session_id=session.id, state=State.FAILED, reason="worker gone")
            return
        agent_services.session_set_state(
            session_id=session.id, state=State.RUNNING, reason="resumed by an operator", expect=(State.PAUSED,)
        )
