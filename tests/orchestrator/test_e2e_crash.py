"""Crash safety, end to end, with real Celery workers and the real broker.

The whole worker node (main process and pool) is SIGKILLed at the worst moment of each stage,
when the stage's work is done but its success is not yet committed (the chaos hook
``FACTORY_CRASH_POINT=<stage>:after_work``, see ``pipeline.chaos_crash_point``); a fresh node
(without the hook) takes over and beat's reconciler recovers the run from the database. Then the
broker loses everything it holds, and beat dies. Every run must finish with each side effect
exactly once: one implementation commit, one live release, one success per stage, one final
message to the person, one Usage row per stage attempt, and no process left behind.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings

from agents import services as agent_services
from agents.models import Usage, WorkerSession
from orchestrator.deploy.local import RELEASE_MARKER, http
from orchestrator.git import bare_repo_path, git
from orchestrator.maintenance import workers_reap
from orchestrator.procs import pids_with_marker, process_alive
from orchestrator.runtime.base import INSTANCE_MARKER, SESSION_MARKER, factory_instance
from projects import people, services
from projects.models import Deployment, OutboundMessage, PipelineRun, RunEvent, StageRun
from tests.conftest import child_env, wait_for_run

STAGES = ["architect", "preparer", "developer", "tester", "deployer", "notify"]
DESCRIPTION = "a web service that greets people by name"
CHAT = 4242
# Beat's sweeps every 2 s, and a message to the person whose delivery task died with a node is
# sent again after 2 s (instead of minutes), so a kill never leaves the chat waiting.
FAST = {"WORKER_SWEEP_INTERVAL_SECONDS": "2", "OUTBOUND_REQUEUE_SECONDS": "2"}


@pytest.fixture
def person(user):
    """``user``, reachable in Telegram (chat 4242): every run event they hear about is a message."""
    people.account_link(user=user, telegram_user_id=CHAT, chat_id=CHAT, username="ada_l")
    return user


def _wait(predicate, what: str, procs, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s\n{procs.logs()}"
        time.sleep(0.1)
    return found


def _wait_killed(proc, procs, timeout: float = 120.0) -> None:
    """The node killed itself at its crash point."""
    try:
        proc.wait(timeout)
    except Exception as exc:  # noqa: BLE001 - any failure to die is the test failing
        raise AssertionError(f"the worker did not reach its crash point: {exc}\n{procs.logs()}") from exc
    assert proc.returncode == -signal.SIGKILL, procs.logs()


def _our_pids() -> set[int]:
    """Every live process of this installation's workers (holders and the commands inside them)."""
    return set(pids_with_marker(INSTANCE_MARKER, factory_instance()))


def assert_exactly_once(run: PipelineRun, telegram) -> None:
    """What a run that went through crashes must look like: as if it had never crashed."""
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    project = run.project
    # One implementation commit per iteration, on top of the scaffold.
    commits = int(git("rev-list", "--count", run.branch, cwd=bare_repo_path(project.slug)).stdout)
    assert commits == 1 + run.iteration
    # One release, live, answering, and the project's main line is the deployed commit.
    live = Deployment.objects.get(project=project)
    assert live.status == "live"
    assert http(live.url + "health")[0] == 200
    main = git("rev-parse", "main", cwd=bare_repo_path(project.slug)).stdout.strip()
    assert main == live.commit_sha
    assert run.events.filter(type=RunEvent.Type.DEPLOYED).count() == 1
    # One success per stage (and iteration), no stage left open.
    succeeded = Counter(
        run.events.filter(type=RunEvent.Type.STAGE_SUCCEEDED).values_list("stage", "payload__iteration")
    )
    assert succeeded == Counter({(stage, 1): 1 for stage in STAGES}), succeeded
    assert set(StageRun.objects.filter(run=run).values_list("status", flat=True)) == {"succeeded"}
    # One final message: one event, one outbound message, and the person heard "is live" once.
    for once in RunEvent.ONCE:
        assert run.events.filter(type=once).count() <= 1, once
    notified = run.events.get(type=RunEvent.Type.NOTIFIED)
    assert OutboundMessage.objects.filter(event=notified).count() == 1
    telegram.wait_for_sent(lambda s: "is live" in s.text, timeout=30)
    time.sleep(0.5)  # a second delivery would come right after the first
    assert [t for t in telegram.texts_to(CHAT) if "is live" in t] == [
        f"Greeter is live.\nService running at {live.url}"
    ]
    assert (
        OutboundMessage.objects.values("event_id").exclude(event_id=None).distinct().count()
        == OutboundMessage.objects.exclude(event_id=None).count()
    )
    # One Usage row per stage attempt; a later attempt's row says it is a rerun.
    rows = list(Usage.objects.filter(stage_run__run=run).values_list("stage_run_id", "stage_attempt", "rerun"))
    attempts = Counter((stage_run, attempt) for stage_run, attempt, _ in rows)
    assert all(n == 1 for n in attempts.values()), rows
    first = {}
    for stage_run, attempt, _ in rows:
        first[stage_run] = min(first.get(stage_run, attempt), attempt)
    assert all(rerun == (attempt > first[stage_run]) for stage_run, attempt, rerun in rows), rows
    # No orphan process after one reap sweep: only live sessions' workers, only the live release.
    workers_reap()
    live_sessions = list(WorkerSession.objects.filter(state__in=WorkerSession.LIVE))
    # At most the project's developer and tester workers are left, one of each (paused for the
    # next run); a worker that died with the killed node is no longer counted live.
    roles = [s.role for s in live_sessions]
    assert len(roles) == len(set(roles)) and set(roles) <= {"developer", "tester"}, list(
        WorkerSession.objects.values_list("id", "state", "state_reason", "owner_node")
    )
    owned = set()
    for session in live_sessions:
        assert process_alive(int(session.container_id)), session
        owned |= set(pids_with_marker(SESSION_MARKER, str(session.id)))
    assert _our_pids() <= owned, (_our_pids(), owned)
    for session in WorkerSession.objects.exclude(state__in=WorkerSession.LIVE):
        assert pids_with_marker(SESSION_MARKER, str(session.id)) == [], session
    assert pids_with_marker(RELEASE_MARKER, str(live.id)) == [live.pid]


@pytest.mark.e2e
@pytest.mark.chaos
@pytest.mark.parametrize("stage", STAGES)
def test_a_node_killed_after_a_stages_work_before_its_success_still_finishes_the_run_exactly_once(
    stage, celery_procs, telegram, person
):
    env = {**FAST, **telegram.worker_env()}
    first = celery_procs.worker(FACTORY_CRASH_POINT=f"{stage}:after_work", **env)
    celery_procs.beat(**env)
    project, run = services.project_create(owner=person, description=DESCRIPTION)
    _wait_killed(first, celery_procs)
    killed = StageRun.objects.get(run=run, stage=stage)
    assert (killed.status, killed.attempt) == ("running", 1)  # its work was done; its success never committed

    celery_procs.worker(**env)  # a fresh node; beat's reconciler finds the silent stage
    run = wait_for_run(run.id, procs=celery_procs)
    assert_exactly_once(run, telegram)
    killed.refresh_from_db()
    assert killed.attempt == 2
    assert run.events.filter(type=RunEvent.Type.STAGE_REQUEUED, stage=stage, payload__reason="worker_lost").count() == 1
    if stage in ("architect", "developer"):
        # Both agent turns really ran and both cost money: both are kept, the second says why.
        assert list(
            Usage.objects.filter(stage_run=killed).order_by("stage_attempt").values_list("stage_attempt", "rerun")
        ) == [(1, False), (2, True)]


@pytest.mark.e2e
@pytest.mark.chaos
def test_one_run_survives_a_node_killed_in_every_stage_in_turn(celery_procs, telegram, person):
    env = {**FAST, **telegram.worker_env()}
    celery_procs.beat(**env)
    project, run = None, None
    for stage in STAGES:  # six nodes in turn, each killed after the work of the next stage
        node = celery_procs.worker(FACTORY_CRASH_POINT=f"{stage}:after_work", **env)
        if run is None:
            project, run = services.project_create(owner=person, description=DESCRIPTION)
        _wait_killed(node, celery_procs)
    celery_procs.worker(**env)
    run = wait_for_run(run.id, procs=celery_procs)
    assert_exactly_once(run, telegram)
    assert list(StageRun.objects.filter(run=run).order_by("id").values_list("stage", "attempt")) == [
        (stage, 2) for stage in STAGES
    ]
    assert run.events.filter(type=RunEvent.Type.STAGE_REQUEUED, payload__reason="worker_lost").count() == 6


# --- the broker loses everything -------------------------------------------------------------
def _broker_messages() -> int:
    """How many messages the broker holds in its queues."""
    if settings.CELERY_BROKER_URL.startswith("redis"):
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        try:
            return sum(client.llen(key) for key in client.scan_iter("*") if client.type(key) == b"list")
        finally:
            client.close()
    return sum(1 for path in (Path(settings.BROKER_FOLDER) / "queue").iterdir() if path.suffix == ".msg")


def _broker_flush() -> None:
    """The broker loses all it holds: Redis restarted without persistence (every key of the
    broker's database: queues, unacked messages, kombu's bindings), or the broker folder wiped."""
    if settings.CELERY_BROKER_URL.startswith("redis"):
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        try:
            client.flushdb()
        finally:
            client.close()
        return
    for path in (Path(settings.BROKER_FOLDER) / "queue").iterdir():
        path.unlink(missing_ok=True)


def _agent_at_work() -> bool:
    for pid in pids_with_marker(INSTANCE_MARKER, factory_instance()):
        try:
            if b"agents.scripted.agent" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except FileNotFoundError:
            continue
    return False


@pytest.mark.e2e
@pytest.mark.chaos
def test_the_broker_losing_everything_mid_run_the_run_finishes_through_the_reconciler(celery_procs, telegram, person):
    agent_services.agent_config_set(role="developer", options={"work_seconds": 4})
    env = {**FAST, **telegram.worker_env(), "STAGE_PICKUP_SECONDS": "3"}
    first = celery_procs.worker(**env)
    celery_procs.beat(**env)
    project, run = services.project_create(owner=person, description=DESCRIPTION)
    _wait(_agent_at_work, "the developer agent at work", celery_procs)
    # 1. While the Developer works, the broker forgets everything (its in-flight message too).
    #    Processes that were connected before (this node, beat) must still be able to send.
    _broker_flush()
    # 2. The node shuts down (warm: it finishes the Developer, which sends the Tester's message).
    first.send_signal(signal.SIGTERM)
    first.wait(60)
    assert StageRun.objects.get(run=run, stage="developer").status == "succeeded"
    assert StageRun.objects.get(run=run, stage="tester").status == "pending"
    assert _broker_messages() >= 1, "the Tester's message was sent into the void"
    # 3. The broker forgets again, now with the Tester's message in it; a new node starts.
    _broker_flush()
    celery_procs.worker(**env)
    run = wait_for_run(run.id, procs=celery_procs)
    assert_exactly_once(run, telegram)
    assert run.events.filter(type=RunEvent.Type.STAGE_REQUEUED, stage="tester", payload__reason="message_lost").exists()


# --- beat dies -------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.chaos
def test_beat_killed_mid_run_a_lost_stage_waits_for_it_and_a_restarted_beat_finishes_the_run(
    celery_procs, telegram, person
):
    env = {**FAST, **telegram.worker_env()}
    first = celery_procs.worker(FACTORY_CRASH_POINT="developer:after_work", **env)
    beat = celery_procs.beat(**env)
    project, run = services.project_create(owner=person, description=DESCRIPTION)
    _wait(
        lambda: StageRun.objects.filter(run=run, stage="preparer", status="succeeded").exists(),
        "the preparer's success",
        celery_procs,
    )
    celery_procs.kill(beat)  # SIGKILL: no reconciler any more
    _wait_killed(first, celery_procs)  # ...and the node dies after the Developer's work
    celery_procs.worker(**env)
    # Nobody re-enqueues the silent stage while beat is dead.
    time.sleep(float(child_env()["STAGE_STALE_SECONDS"]) + 3)
    developer = StageRun.objects.get(run=run, stage="developer")
    assert (developer.status, developer.attempt) == ("running", 1)
    celery_procs.beat(**env)
    run = wait_for_run(run.id, procs=celery_procs)
    assert_exactly_once(run, telegram)
    developer.refresh_from_db()
    assert developer.attempt == 2


# --- a node starting after its predecessor was killed --------------------------------------
@pytest.mark.e2e
def test_paused_workers_that_died_with_a_killed_node_are_marked_vanished_when_a_node_starts(celery_procs, user):
    first = celery_procs.worker(FACTORY_CRASH_POINT="developer:after_work")
    project, run = services.project_create(owner=user, description=DESCRIPTION)
    _wait_killed(first, celery_procs)
    session = WorkerSession.objects.get(project=project, role="developer")
    # The Developer paused its worker before the kill; a stopped process group whose parent
    # died gets SIGHUP from the kernel, so the worker died with the node...
    assert session.state == "paused"
    _wait(lambda: not process_alive(int(session.container_id)), "the paused worker's death", celery_procs, 10)
    # ...and the next node to start (no beat, so no reap sweep) marks it at once.
    celery_procs.worker()
    session.refresh_from_db()
    assert session.state == "failed"
    assert session.state_reason.startswith("worker vanished"), session.state_reason
