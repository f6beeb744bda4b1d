"""State changes of agent configs, worker sessions and the usage ledger."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from datetime import timedelta
from decimal import Decimal

import structlog
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agents.contracts import AgentResult
from agents.models import AgentConfig, Escalation, Usage, WorkerSession, WorkerTransition
from config.errors import AppError, Conflict, NotFound, ValidationFailed
from projects import incidents, notifications, runs
from projects import services as project_services
from projects.events import event_record
from projects.models import Incident, PipelineRun
from secrets_meta import redaction
from secrets_meta.models import BotToken, SecretMeta

log = structlog.get_logger(__name__)
State = WorkerSession.State


class WorkerQuotaExceeded(AppError):
    """MAX_WORKERS live sessions exist; a new one must wait (the stage retries later)."""

    status_code = 503
    code = "worker_quota"


def agent_config_for(*, role: str) -> AgentConfig:
    """The role's config; a missing one is created with the defaults (scripted backend)."""
    config, _ = AgentConfig.objects.get_or_create(role=role)
    return config


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
    try:
        config.full_clean()
    except DjangoValidationError as exc:
        problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
        raise ValidationFailed(
            f"The {role} config is not valid: {problems}",
            code="agent_config_invalid",
            extra={"fields": exc.message_dict},
        ) from exc
    config.save()
    return config


def current_node() -> str:
    """The Celery node this process belongs to (set when a worker starts), else the host name."""
    return os.environ.get("FACTORY_NODE") or socket.gethostname()


def _quota_lock() -> None:
    """Serialise quota checks: an advisory lock on PostgreSQL; SQLite's write lock already does."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x57524B52])


@transaction.atomic
def session_create(
    *, project_id: int, run_id: int | None, role: str, runtime: str, workspace_root: str
) -> WorkerSession:
    """Record a worker before it exists, so a crash mid-start leaves a row the reaper can find.

    Refused with WorkerQuotaExceeded when MAX_WORKERS sessions are live (paused ones count).
    Each session gets a workspace of its own under ``workspace_root``: a replacement worker never
    inherits the half-written files (or git locks) of the one it replaces.
    """
    _quota_lock()
    live = WorkerSession.objects.filter(state__in=WorkerSession.LIVE).count()
    if live >= settings.MAX_WORKERS:
        raise WorkerQuotaExceeded(
            f"{live} workers are live; the limit is {settings.MAX_WORKERS}.",
            extra={"live": live, "limit": settings.MAX_WORKERS},
        )
    now = timezone.now()
    try:
        with transaction.atomic():
            session = WorkerSession.objects.create(
                project_id=project_id,
                run_id=run_id,
                role=role,
                runtime=runtime,
                state=State.STARTING,
                state_reason="created",
                state_changed_at=now,
                last_activity_at=now,
                owner_node=current_node(),
            )
    except IntegrityError as exc:
        raise Conflict(f"Project {project_id} already has a live {role} worker.", code="worker_exists") from exc
    session.workspace = f"{workspace_root.rstrip('/')}/session-{session.id}"
    WorkerSession.objects.filter(id=session.id).update(workspace=session.workspace)
    WorkerTransition.objects.create(session=session, from_state="", to_state=State.STARTING, reason="created")
    return session


@transaction.atomic
def session_set_state(
    *, session_id: int, state: str, reason: str, container_id: str | None = None, expect: tuple[str, ...] | None = None
) -> bool:
    """Move a session to ``state`` (only from one of ``expect``, if given); record the transition."""
    current = WorkerSession.objects.select_for_update().filter(id=session_id).values_list("state", flat=True).first()
    if current is None or (expect is not None and current not in expect):
        return False
    now = timezone.now()
    fields: dict = {"state": state, "state_reason": reason[:200], "state_changed_at": now, "last_activity_at": now}
    if container_id is not None:
        fields["container_id"] = container_id
    if state != State.RUNNING:  # a worker that stops running loses its token (paused, idle, ended)
        fields.update(api_token_hash="", api_token_expires_at=None)
    if state in (State.TERMINATED, State.FAILED):
        fields["terminated_at"] = now
    WorkerSession.objects.filter(id=session_id).update(**fields)
    WorkerTransition.objects.create(session_id=session_id, from_state=current, to_state=state, reason=reason[:200])
    log.info("worker_state", session_id=session_id, state=state, reason=reason)
    return True


def session_attach_run(*, session_id: int, run_id: int) -> None:
    WorkerSession.objects.filter(id=session_id).update(run_id=run_id, last_activity_at=timezone.now())


def sessions_touch(*, run_id: int) -> None:
    """Work is going on in this run's running workers: they are not idle."""
    WorkerSession.objects.filter(run_id=run_id, state=State.RUNNING).update(last_activity_at=timezone.now())


def session_record_agent(*, session_id: int, agent_session_id: str | None, context_tokens: int) -> None:
    """Remember the agent's own session (for --resume) and how large its context has grown."""
    fields: dict = {"context_tokens": context_tokens, "last_activity_at": timezone.now()}
    if agent_session_id:
        fields["agent_session_id"] = agent_session_id
    WorkerSession.objects.filter(id=session_id).update(**fields)


def session_resumable_agent(session: WorkerSession) -> str | None:
    """The agent session to resume, if the same project's worker is still a good place for it:
    under AGENT_RESUME_MAX_CONTEXT tokens of context and active within AGENT_RESUME_MAX_AGE."""
    if not session.agent_session_id:
        return None
    if session.context_tokens >= settings.AGENT_RESUME_MAX_CONTEXT_TOKENS:
        return None
    if not session.last_activity_at or timezone.now() - session.last_activity_at > timedelta(
        seconds=settings.AGENT_RESUME_MAX_AGE_SECONDS
    ):
        return None
    return session.agent_session_id


# --- the worker's API token (channel 2) ----------------------------------------------
def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def session_issue_token(*, session_id: int, run_id: int) -> str:
    """A fresh short-lived token for the worker, scoped to ``run_id``; only its hash is kept.

    The worker is about to speak for this run: this process learns the project's secret values,
    so the agent's words are redacted before anything stores them (agents/backends)."""
    redaction.load_run(run_id)
    token = secrets.token_urlsafe(32)
    WorkerSession.objects.filter(id=session_id).update(
        api_token_hash=_hash(token),
        run_id=run_id,
        api_token_expires_at=timezone.now() + timedelta(seconds=settings.WORKER_TOKEN_TTL_SECONDS),
    )
    return token


def session_for_token(token: str) -> WorkerSession | None:
    """The session a token belongs to, while it is valid: not expired, its worker running and
    its run active. (Pausing, ending or reporting a result also revokes it: see below.)"""
    if not token:
        return None
    return (
        WorkerSession.objects.select_related("run")
        .filter(
            api_token_hash=_hash(token),
            state=State.RUNNING,
            api_token_expires_at__gt=timezone.now(),
            run__status__in=PipelineRun.ACTIVE,
        )
        .first()
    )


# An AgentResult's fields that are validated identifiers, not words: a secret that happens to
# look like part of a commit hash must not corrupt it.
_RESULT_IDENTIFIERS = ("status", "commit")


def _redacted_result(result: AgentResult) -> dict:
    data = result.model_dump()
    return {k: v if k in _RESULT_IDENTIFIERS else redaction.redact_data(v) for k, v in data.items()}


@transaction.atomic
def session_report_result(*, session_id: int, result: AgentResult) -> None:
    """The agent's result through channel 2; it is the worker's last word, so its token ends."""
    redaction.load_project(WorkerSession.objects.filter(id=session_id).values_list("project_id", flat=True).first())
    WorkerSession.objects.filter(id=session_id).update(
        reported_result=_redacted_result(result),
        last_activity_at=timezone.now(),
        api_token_hash="",
        api_token_expires_at=None,
    )


def session_take_result(*, session_id: int) -> AgentResult | None:
    """The result reported through the CLI, cleared so a later turn cannot reuse it."""
    with transaction.atomic():
        raw = (
            WorkerSession.objects.select_for_update()
            .filter(id=session_id)
            .values_list("reported_result", flat=True)
            .first()
        )
        if raw is None:
            return None
        WorkerSession.objects.filter(id=session_id).update(reported_result=None)
    return AgentResult.model_validate(raw)


def _require_active_run(session: WorkerSession) -> None:
    """The token was checked when the request arrived; the run may have finished since."""
    if session.run_id is None or not runs.run_lock_active(run_id=session.run_id):
        raise Conflict("This worker's run has finished; nothing more can be added to it.", code="run_finished")


@transaction.atomic
def worker_progress(*, session: WorkerSession, message: str) -> None:
    """Channel 2: the agent says what it is doing; the worker keeps running."""
    _require_active_run(session)
    redaction.load_project(session.project_id)
    WorkerSession.objects.filter(id=session.id).update(last_activity_at=timezone.now())
    event_record(
        run_id=session.run_id,
        type="agent.progress",
        stage=session.role,
        payload={"session_id": session.id, "message": redaction.redact(message)},
    )


@transaction.atomic
def worker_ask(*, session: WorkerSession, question: str) -> None:
    """Channel 2: the agent asks a person. (Answers arrive with the escalation flow.)"""
    _require_active_run(session)
    redaction.load_project(session.project_id)
    WorkerSession.objects.filter(id=session.id).update(last_activity_at=timezone.now())
    event_record(
        run_id=session.run_id,
        type="agent.question",
        stage=session.role,
        payload={"session_id": session.id, "question": redaction.redact(question)},
    )


# --- the ledger ----------------------------------------------------------------------
@transaction.atomic
def usage_record(
    *,
    project_id: int,
    stage_run_id: int | None,
    session_id: int | None,
    role: str,
    backend: str,
    model: str = "",
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    cost_usd: Decimal | float | str = 0,
    stage_attempt: int | None = None,
) -> Usage:
    """One agent turn's tokens and dollars; the run's running cost moves with it.

    A turn under a later claim of a stage run that already has turns of an earlier claim is a
    rerun (the worker died after the turn, before the stage's success was committed): it is
    kept, since it cost money, and marked so a person sees why the stage cost twice.
    """
    cost = Decimal(str(cost_usd))
    rerun = bool(
        stage_run_id is not None
        and stage_attempt is not None
        and Usage.objects.filter(stage_run_id=stage_run_id, stage_attempt__lt=stage_attempt).exists()
    )
    usage = Usage.objects.create(
        project_id=project_id,
        stage_run_id=stage_run_id,
        session_id=session_id,
        role=role,
        backend=backend,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens,
        cost_usd=cost,
        stage_attempt=stage_attempt,
        rerun=rerun,
    )
    if stage_run_id is not None:
        runs.run_add_cost(stage_run_id=stage_run_id, cost_usd=cost)
    return usage


# --- escalations: asking a person ---------------------------------------------------
ESCALATION_ACTIONS = {"guidance", "raise_budget", "cancel", "retry"}


@transaction.atomic
def escalation_raise(
    *,
    run_id: int,
    stage: str,
    reason: str,
    question: str,
    context: dict | None = None,
    stage_run_id: int | None = None,
    attempt: int | None = None,
) -> Escalation | None:
    """Stop the run and ask a person; the run waits (``waiting_human``) until answered.

    With ``stage_run_id``, that claimed stage is given back (fenced by ``attempt``, through the
    run state machine) so the answer resumes it; None if the claim was lost.
    """
    if not runs.run_wait_for_human(run_id=run_id, stage_run_id=stage_run_id, attempt=attempt):
        return None
    redaction.load_run(run_id)  # the question may be an agent's words
    question, context = redaction.redact(question), redaction.redact_data(context)
    escalation = Escalation.objects.create(
        run_id=run_id,
        stage=stage,
        reason=reason,
        question=question,
        context=context or {},
        deadline=timezone.now() + timedelta(seconds=settings.ESCALATION_TTL_SECONDS),
    )
    event_record(
        run_id=run_id,
        type="escalation.raised",
        stage=stage,
        payload={"escalation_id": escalation.id, "reason": reason, "question": question},
    )
    return escalation


@transaction.atomic
def escalation_release_down(*, incident_id: int, detail: str) -> Escalation | None:
    """The factory gave up repairing a live release: ask the project's owner what to do. The
    question hangs on the run that made the release (finished: nothing waits); answering
    ``retry`` starts the repair over, ``cancel`` leaves the project down. None when that run
    already has an open question."""
    incident = Incident.objects.select_related("deployment", "project").get(id=incident_id)
    name = incident.project.name or f"Project #{incident.project_id}"
    question = (
        f"{name} is down and the factory could not bring it back ({detail[:300]}). Reply “retry” to try "
        "the repair again (restart, then the previous release), or “cancel” to leave it down; you can "
        "also ask for a change, redeploy, or roll back by hand (/rollback)."
    )
    try:
        with transaction.atomic():
            escalation = Escalation.objects.create(
                run_id=incident.deployment.run_id,
                stage="deployer",
                reason=Escalation.Reason.RELEASE_DOWN,
                question=question,
                context={"code": "release_down", "incident_id": incident.id, "deployment_id": incident.deployment_id},
                deadline=timezone.now() + timedelta(seconds=settings.ESCALATION_TTL_SECONDS),
            )
    except IntegrityError:
        log.warning("release_down_not_asked", incident_id=incident.id, reason="the run has an open question")
        return None
    event_record(
        run_id=escalation.run_id,
        type="escalation.raised",
        stage=escalation.stage,
        payload={"escalation_id": escalation.id, "reason": escalation.reason, "question": question},
    )
    return escalation


RETRY_WORDS = {"retry", "try again", "again", "restart", "yes"}
LEAVE_WORDS = {"cancel", "stop", "leave it", "leave it down", "no"}


def _release_down_action(action: str, answer: str) -> str:
    """A question about a release that is down is answered by retry or cancel; a text answer (a
    reply in the chat) says which."""
    if action == "guidance":
        said = answer.strip().strip(".!").lower()
        action = "retry" if said in RETRY_WORDS else "cancel" if said in LEAVE_WORDS else ""
    if action not in ("retry", "cancel"):
        raise ValidationFailed(
            "This question is answered with “retry” (try the repair again) or “cancel” (leave the project down).",
            code="retry_or_cancel",
        )
    return action


# Questions answered by values (secrets, a bot token) given through their own channels.
VALUE_REASONS = (Escalation.Reason.SECRETS_MISSING, Escalation.Reason.BOT_TOKEN)


def _values_present(escalation: Escalation, project_id: int) -> bool:
    if escalation.reason == Escalation.Reason.BOT_TOKEN:
        return BotToken.objects.filter(project_id=project_id, status=BotToken.Status.ASSIGNED).exists()
    missing = set((escalation.context.get("output") or {}).get("missing") or [])
    filled = set(
        SecretMeta.objects.filter(project_id=project_id, key__in=missing, filled=True).values_list("key", flat=True)
    )
    return missing <= filled


@transaction.atomic
def escalation_values_provided(*, project_id: int) -> Escalation | None:
    """A secret or a bot token arrived for a project: if its run waits for exactly these values
    and every one is now there, the question is answered and the run resumes. Idempotent."""
    escalation = (
        Escalation.objects.select_for_update()
        .filter(run__project_id=project_id, status=Escalation.Status.OPEN, reason__in=VALUE_REASONS)
        .first()
    )
    if escalation is None or not _values_present(escalation, project_id):
        return None
    Escalation.objects.filter(id=escalation.id).update(
        status=Escalation.Status.ANSWERED, action=Escalation.Action.PROVIDED, answered_at=timezone.now()
    )
    event_record(
        run_id=escalation.run_id,
        type="escalation.answered",
        stage=escalation.stage,
        payload={"escalation_id": escalation.id, "action": Escalation.Action.PROVIDED, "by": "values"},
    )
    runs.run_resume(run_id=escalation.run_id)
    escalation.refresh_from_db()
    return escalation


@transaction.atomic
def escalation_answer(
    *, escalation_id: int, user, action: str, answer: str = "", budget_increase_usd: Decimal | float | str | None = None
) -> Escalation:
    """A person answers: guidance (the agent's next prompt carries it), more budget, or cancel.

    Anything but cancel resumes the run from the stage that was waiting.
    """
    escalation = Escalation.objects.select_for_update().select_related("run__project").filter(id=escalation_id).first()
    if escalation is None or not (user.is_staff or escalation.run.project.owner_id == user.id):
        raise NotFound("No such question.", code="escalation_not_found")
    if escalation.status != Escalation.Status.OPEN:
        raise Conflict(f"This question is already {escalation.status}.", code="escalation_closed")
    if action not in ESCALATION_ACTIONS:
        raise ValidationFailed(
            f"Unknown answer {action!r}; use one of {', '.join(sorted(ESCALATION_ACTIONS))}.", code="unknown_action"
        )
    answer = (answer or "").strip()
    if escalation.reason == Escalation.Reason.RELEASE_DOWN:
        return _answer_release_down(escalation, user, _release_down_action(action, answer), answer)
    if action == "retry":
        raise ValidationFailed("“retry” answers only a question about a release that is down.", code="unknown_action")
    if escalation.reason == Escalation.Reason.REPO_NAME_TAKEN:
        if action == "raise_budget":
            raise ValidationFailed(
                "This question is answered with the project's new name, or cancel.", code="slug_required"
            )
        if action == "guidance":
            # The answer is the new name: validated and given to the project before the run resumes
            # (a refused name leaves the question open; the Preparer then uses the new name).
            answer = project_services.project_rename(project_id=escalation.run.project_id, slug=answer).slug
    if escalation.reason in VALUE_REASONS and action == "guidance":
        # Never take a secret as guidance text: it would be stored and shown to an agent.
        raise ValidationFailed(
            "This question is answered by providing the values themselves (/secret NAME or /token in the "
            "chat, or the secrets API), not by a text answer.",
            code="values_required",
        )
    if action == "guidance" and not answer:
        raise ValidationFailed("Guidance needs some text for the agent.", code="guidance_required")
    increase = None
    if action == "raise_budget":
        try:
            increase = Decimal(str(budget_increase_usd))
        except (ArithmeticError, ValueError) as exc:
            raise ValidationFailed("The budget increase must be a number of dollars.", code="bad_budget") from exc
        if not increase.is_finite() or increase <= 0 or increase > Decimal(settings.MAX_BUDGET_INCREASE_USD):
            raise ValidationFailed(
                f"The budget increase must be between $0 and ${settings.MAX_BUDGET_INCREASE_USD}.", code="bad_budget"
            )
    _mark_answered(escalation, user, action, answer, increase)
    run = escalation.run
    if user.id != run.project.owner_id:
        # Someone else (an operator, in admin) answered: the person who was asked is told.
        what = {"cancel": "cancelled the run", "raise_budget": f"added ${increase} to the budget; the run goes on"}
        said = f": “{notifications.shorten(answer, 500)}”" if action == "guidance" else ""
        if escalation.reason == Escalation.Reason.REPO_NAME_TAKEN:
            what["guidance"] = f"renamed the project {answer!r}; the run goes on"
        notifications.notify_person(
            user_id=run.project.owner_id,
            run_id=run.id,
            text=f"{run.project.name or f'Project #{run.project_id}'} · run #{run.id}: an operator answered the "
            f"question for you and {what.get(action, 'gave the agent guidance' + said + '; the run goes on')}.",
        )
    if action == "cancel":
        runs.run_cancel(run_id=run.id, user=user)
    else:
        runs.run_resume(
            run_id=run.id,
            budget_increase_usd=increase,
            extra_iteration=escalation.reason == Escalation.Reason.TESTS_FAILING,
        )
    escalation.refresh_from_db()
    return escalation


def _mark_answered(escalation: Escalation, user, action: str, answer: str, increase: Decimal | None = None) -> str:
    """Record a person's answer on the question and in the run's events; who answered."""
    who = getattr(user, "username", "") or "operator"
    Escalation.objects.filter(id=escalation.id).update(
        status=Escalation.Status.ANSWERED,
        action=action,
        answer=answer[:4000],
        budget_increase_usd=increase,
        answered_by=user if user.is_authenticated else None,
        answered_at=timezone.now(),
    )
    event_record(
        run_id=escalation.run_id,
        type="escalation.answered",
        stage=escalation.stage,
        payload={"escalation_id": escalation.id, "action": action, "by": who},
    )
    return who


def _answer_release_down(escalation: Escalation, user, action: str, answer: str) -> Escalation:
    who = _mark_answered(escalation, user, action, answer)
    project = escalation.run.project
    name = project.name or f"Project #{project.id}"
    if action == "retry":
        reopened = incidents.incident_retry(incident_id=escalation.context.get("incident_id"), by=who)
        text = (
            f"{name}: trying the repair again; you will hear how it ends."
            if reopened is not None
            else f"{name}: nothing to try again (the outage is over, or a newer one is being repaired)."
        )
    else:
        text = f"{name} stays down until you ask for a change, a redeploy or a rollback."
    if user.id != project.owner_id:
        text = f"An operator answered the question for you. {text}"
    notifications.notify_person(user_id=project.owner_id, run_id=escalation.run_id, text=text)
    escalation.refresh_from_db()
    return escalation


def escalations_expire() -> list[int]:
    """Fail the runs whose question nobody answered before its deadline; return their run ids."""
    expired = []
    for escalation in Escalation.objects.filter(status=Escalation.Status.OPEN, deadline__lt=timezone.now()):
        with transaction.atomic():
            if not Escalation.objects.filter(id=escalation.id, status=Escalation.Status.OPEN).update(
                status=Escalation.Status.EXPIRED
            ):
                continue
            event_record(
                run_id=escalation.run_id,
                type="escalation.expired",
                stage=escalation.stage,
                payload={"escalation_id": escalation.id},
            )
            if escalation.reason == Escalation.Reason.RELEASE_DOWN:
                continue  # its run ended long ago: the project simply stays down
            runs.run_fail(
                run_id=escalation.run_id,
                code="escalation_expired",
                message=f"Nobody answered in time. The question was: {escalation.question}",
            )
            runs.run_enqueue_notify(run_id=escalation.run_id)
        expired.append(escalation.run_id)
    return expired
