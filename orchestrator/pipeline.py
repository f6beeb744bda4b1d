"""The pipeline: a Celery chain of immutable signatures carrying the run id only.

``architect → preparer → developer → tester ⟲ developer → deployer → notify``. The loop is made
by the Tester (or a Deployer whose release failed its checks) replacing itself with
``developer → tester`` (Celery's ``Task.replace``), so the rest of the chain follows.
``execute`` is what every stage task does: claim the StageRun by compare-and-set, work with a
heartbeat and outside any transaction, record the outcome.

``STAGES`` is the one registry: stage → its module → its task's name → its priority. Chains are
built from task names, so this module never imports the tasks (they import it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType

import structlog
from celery import chain, signature
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from agents import services as agent_services
from agents.services import WorkerQuotaExceeded
from config import task_names
from config.errors import AppError, TransientError
from orchestrator import escalations
from orchestrator.stages import (
    Next,
    StageContext,
    StageFailed,
    StageWait,
    architect,
    deployer,
    developer,
    notify,
    preparer,
    tester,
)
from projects import runs
from projects.models import PipelineRun, Stage
from projects.runs import STAGE_ORDER, ClaimState

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StageEntry:
    module: ModuleType
    task: str
    # Later stages go first (Redis: 0 is served first), so runs already under way finish
    # before new ones start: under load runs complete one after another, not all at the end.
    priority: int


STAGES: dict[str, StageEntry] = {
    Stage.ARCHITECT: StageEntry(architect, task_names.PIPELINE_ARCHITECT, 5),
    Stage.PREPARER: StageEntry(preparer, task_names.PIPELINE_PREPARER, 4),
    Stage.DEVELOPER: StageEntry(developer, task_names.PIPELINE_DEVELOPER, 3),
    Stage.TESTER: StageEntry(tester, task_names.PIPELINE_TESTER, 2),
    Stage.DEPLOYER: StageEntry(deployer, task_names.PIPELINE_DEPLOYER, 1),
    Stage.NOTIFY: StageEntry(notify, task_names.PIPELINE_NOTIFY, 0),
}
assert tuple(STAGES) == STAGE_ORDER
assert all(entry.priority < task_names.PIPELINE_START_PRIORITY_NEW for entry in STAGES.values())


MAX_PRIORITY = task_names.MAX_PRIORITY


def stage_signature(run_id: int, stage: str, delay: int = 0):
    entry = STAGES[stage]
    priority = min(MAX_PRIORITY, entry.priority + delay)
    return signature(entry.task, kwargs={"run_id": run_id}, immutable=True, priority=priority)


def next_stage(stage: str) -> str:
    return STAGE_ORDER[STAGE_ORDER.index(stage) + 1]


def chain_from(run_id: int, stage: str = Stage.ARCHITECT, until: str | None = None, delay: int = 0) -> chain:
    """The chain of stage tasks from ``stage`` to the end (or to ``until``, included).

    ``delay`` lowers the first stage's priority: a new run of a person who already has runs
    under way goes behind other people's new runs, so queued work from different people
    interleaves."""
    stages = STAGE_ORDER[STAGE_ORDER.index(stage) : (STAGE_ORDER.index(until) + 1) if until else None]
    return chain(*(stage_signature(run_id, s, delay if i == 0 else 0) for i, s in enumerate(stages)))


class _Heartbeats:
    """One side thread per process writes the heartbeat of every claim the process is working
    on (and touches the run's running workers, so they are not idle). A thread started and
    joined for each stage cost both on every stage, a no-op one included; this one is started
    once per process (again after a fork) and beats each claim every STAGE_HEARTBEAT_SECONDS,
    the first time that long after the claim, as before."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[int, tuple[int, int, float]] = {}  # stage_run_id -> (run_id, attempt, next beat)
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def watching(self, run_id: int, stage_run_id: int, attempt: int):
        with self._lock:
            self._claims[stage_run_id] = (run_id, attempt, time.monotonic() + settings.STAGE_HEARTBEAT_SECONDS)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._beat_forever, daemon=True, name="heartbeats")
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                if self._claims.get(stage_run_id, (0, attempt))[1] == attempt:
                    self._claims.pop(stage_run_id, None)

    def _beat_forever(self) -> None:
        while True:
            time.sleep(settings.STAGE_HEARTBEAT_SECONDS / 4)
            self._beat_due()

    def _beat_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [(stage_run_id, claim) for stage_run_id, claim in self._claims.items() if claim[2] <= now]
        for stage_run_id, (run_id, attempt, _) in due:
            try:
                alive = runs.stage_heartbeat(stage_run_id=stage_run_id, attempt=attempt)
                if alive:
                    agent_services.sessions_touch(run_id=run_id)
            except DatabaseError as exc:  # try again at the next beat, on a new connection
                log.warning("heartbeat_failed", stage_run_id=stage_run_id, error=str(exc))
                connection.close()
                continue
            with self._lock:
                if self._claims.get(stage_run_id, (0, None))[1] != attempt:
                    continue  # the stage ended meanwhile
                if alive:
                    self._claims[stage_run_id] = (run_id, attempt, now + settings.STAGE_HEARTBEAT_SECONDS)
                else:
                    log.warning("heartbeat_claim_lost", stage_run_id=stage_run_id)
                    del self._claims[stage_run_id]
        with self._lock:
            idle = not self._claims
        if idle:
            connection.close()  # this thread's own connection: none is held while nothing runs


HEARTBEATS = _Heartbeats()


def _stage_module(stage: str) -> ModuleType:
    """The stage's module; a benchmark may replace every stage's work (settings.BENCH_STAGE_MODULE)."""
    if settings.BENCH_STAGE_MODULE:
        return import_module(settings.BENCH_STAGE_MODULE)
    return STAGES[stage].module


@dataclass(frozen=True)
class _Wait:
    """Next.WAIT with the delay the stage's task retries after."""

    seconds: float


def retry_delay(exc: AppError) -> float:
    """How long a stage waits before it runs again: ``WORKER_QUOTA_RETRY_SECONDS``, or longer when
    the outside service said how long (GitHub's ``Retry-After``, or its rate-limit window's reset,
    carried as ``retry_after`` on the error or in its ``extra``), never past ``STAGE_RETRY_MAX_SECONDS``."""
    base = float(settings.WORKER_QUOTA_RETRY_SECONDS)
    hint = getattr(exc, "retry_after", None)
    if hint is None:
        hint = (exc.extra or {}).get("retry_after")
    try:
        hint = float(hint) if hint is not None else 0.0
    except (TypeError, ValueError):
        hint = 0.0
    return min(max(base, hint), max(base, float(settings.STAGE_RETRY_MAX_SECONDS)))


def execute(*, stage: str, run_id: int, task_id: str) -> Next | None:
    """Run one stage of one run. Returns what the chain should do next, or None to stop it."""
    return execute_step(stage=stage, run_id=run_id, task_id=task_id)[0]


def execute_step(*, stage: str, run_id: int, task_id: str) -> tuple[Next | None, float]:
    """``execute``, with the seconds to wait before trying again when the answer is Next.WAIT
    (the task retries after them)."""
    outcome = _execute(stage=stage, run_id=run_id, task_id=task_id)
    if isinstance(outcome, _Wait):
        return Next.WAIT, outcome.seconds
    if outcome is Next.WAIT:
        return Next.WAIT, float(settings.WORKER_QUOTA_RETRY_SECONDS)
    return outcome, 0.0


def _execute(*, stage: str, run_id: int, task_id: str) -> Next | _Wait | None:
    close_old_connections()
    claim = runs.stage_claim(run_id=run_id, stage=stage, task_id=task_id)
    if claim.state is ClaimState.GONE:
        log.warning("run_missing", run_id=run_id, stage=stage)  # deleted, or a message from another database
        return None
    if claim.state is ClaimState.DONE:
        return Next.CONTINUE
    if claim.state is ClaimState.BUSY:
        log.info("stage_busy", run_id=run_id, stage=stage, task_id=task_id)
        return None
    if claim.state is ClaimState.WAIT:
        # Not a retry: the run is started again when a place frees (one chain per run).
        log.info("run_waits_for_its_turn", run_id=run_id, stage=stage)
        return None
    row, run = claim.stage_run, claim.run
    ctx = StageContext(run=run, stage_run=row, project=run.project, task_id=task_id)
    with (
        structlog.contextvars.bound_contextvars(run_id=run_id, stage=stage, task_id=task_id),
        HEARTBEATS.watching(run_id, row.id, row.attempt),
    ):
        try:
            outcome = _stage_module(stage).run(ctx)
        except (WorkerQuotaExceeded, StageWait) as exc:
            # Not a failure: too many live workers, or the project's deploy lock is held. Give
            # the claim back; the task retries later.
            log.info("worker_quota_wait" if isinstance(exc, WorkerQuotaExceeded) else "stage_wait", reason=exc.message)
            runs.stage_release(stage_run_id=row.id, attempt=row.attempt, reason=exc.message)
            return _Wait(retry_delay(exc))
        except TransientError as exc:
            # An outside service hiccuped (timeout, 5xx, rate limit): try the stage again later.
            # Only these failures count toward STAGE_MAX_ATTEMPTS (claims also rise on quota
            # waits and reconciler requeues, which are not failures).
            failures = row.transient_failures + 1
            if failures >= settings.STAGE_MAX_ATTEMPTS:
                runs.stage_fail(
                    stage_run_id=row.id,
                    attempt=row.attempt,
                    code=exc.code,
                    message=f"{exc.message} (gave up after {failures} attempts)",
                )
                return Next.CONTINUE
            log.warning("stage_transient_error", reason=exc.message, failures=failures)
            runs.stage_release(stage_run_id=row.id, attempt=row.attempt, reason=exc.message, transient=True)
            return _Wait(retry_delay(exc))
        except StageFailed as exc:
            log.warning("stage_failed", code=exc.code, reason=exc.message)
            if escalations.should_escalate(stage, exc.code):
                escalations.escalate(ctx, exc)  # the run waits for a person instead of failing
                return Next.CONTINUE
            runs.stage_fail(
                stage_run_id=row.id, attempt=row.attempt, code=exc.code, message=exc.message, output=exc.output
            )
            return Next.CONTINUE
        except SoftTimeLimitExceeded:
            exc = StageFailed(
                f"The {stage} stage ran past its time limit ({settings.STAGE_SOFT_TIME_LIMIT}s).", code="stage_timeout"
            )
            if escalations.should_escalate(stage, exc.code):
                escalations.escalate(ctx, exc)  # like other agent failures, a person decides
                return Next.CONTINUE
            runs.stage_fail(stage_run_id=row.id, attempt=row.attempt, code=exc.code, message=exc.message)
            return Next.CONTINUE
        except AppError as exc:
            log.warning("stage_error", code=exc.code, reason=exc.message)
            runs.stage_fail(stage_run_id=row.id, attempt=row.attempt, code=exc.code, message=exc.message)
            return Next.CONTINUE
        except Exception as exc:
            # A bug: the run must not vanish silently. Fail it with what happened, keep the trace.
            log.exception("stage_crashed")
            runs.stage_fail(
                stage_run_id=row.id,
                attempt=row.attempt,
                code="internal_error",
                message=f"The {stage} stage crashed: {type(exc).__name__}: {exc}",
            )
            return Next.CONTINUE
    if f"{stage}:after_work" == settings.CHAOS_CRASH_POINT:
        chaos_crash_point()
    if outcome.next is Next.LOOP:
        report = outcome.output.get("report", {})
        what = (
            "the release failed its checks"
            if stage == Stage.DEPLOYER
            else f"{report.get('failed', 0)} failed, {report.get('errors', 0)} errors"
        )
        if not runs.stage_loop_back(
            stage_run_id=row.id, attempt=row.attempt, output=outcome.output, message=f"{what}; back to the developer"
        ):
            return None  # the claim was lost: whoever holds it now drives the run
        return Next.LOOP
    if not runs.stage_succeed(stage_run_id=row.id, attempt=row.attempt, output=outcome.output, claimed=row):
        return None
    return Next.CONTINUE


def chaos_crash_point() -> None:
    """Chaos testing only (``FACTORY_CRASH_POINT=<stage>:after_work``; off by default, and then
    it costs one string comparison per stage): SIGKILL this whole Celery node, its process group
    (the main process and its pool), at the worst moment: the stage's work is done, its success
    not yet committed. The end-to-end crash tests use it to prove that a rerun of every stage
    has each side effect exactly once. The node must lead its own process group (a test starts
    it with a new session), or the kill takes whatever else shares the group."""
    log.critical("chaos_crash_point", point=settings.CHAOS_CRASH_POINT)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def start(*, run_id: int) -> None:
    """Enqueue a run's chain from the stage it is at (from the start for a new run)."""
    run = PipelineRun.objects.select_related("project").get(id=run_id)
    first = runs.first_open_stage(run)
    delay = runs.queued_ahead(run=run) if first == Stage.ARCHITECT else 0
    chain_from(run_id, first, delay=delay).apply_async()
