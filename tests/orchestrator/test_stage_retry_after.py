"""A stage that waits retries after the outside service's own hint (GitHub's Retry-After, or the
rate-limit window's reset), never sooner than WORKER_QUOTA_RETRY_SECONDS and never past
STAGE_RETRY_MAX_SECONDS; everything else keeps the fixed delay."""

from __future__ import annotations

import pytest
from celery.exceptions import Retry

from orchestrator import pipeline, tasks
from orchestrator.stages import Next
from projects.models import StageRun
from tests.orchestrator.test_codehost_github import drive, github  # noqa: F401  (the fixture)

SECONDARY = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."


class _TaskRequest:
    id = "in-process"
    chain = None


class CeleryTask:
    """The two things _run_stage asks of its Celery task: its request, and retry(countdown=...)."""

    request = _TaskRequest()

    def __init__(self):
        self.countdowns: list[float] = []

    def retry(self, *, countdown):
        self.countdowns.append(countdown)
        return Retry(when=countdown)


def test_a_secondary_rate_limit_retries_after_githubs_retry_after(new_run, github, settings):  # noqa: F811
    settings.WORKER_QUOTA_RETRY_SECONDS = 15
    settings.STAGE_RETRY_MAX_SECONDS = 900
    run = new_run()
    drive(run.id, until="developer")
    github.fail("POST", r"/pulls$", 403, SECONDARY, headers={"Retry-After": "120"})
    task = CeleryTask()
    with pytest.raises(Retry):
        tasks._run_stage(task, "tester", run.id)
    assert task.countdowns == [120.0]
    tester = StageRun.objects.get(run=run, stage="tester")
    assert tester.status == "pending" and tester.transient_failures == 1
    # The next attempt goes through.
    assert pipeline.execute_step(stage="tester", run_id=run.id, task_id="again") == (Next.CONTINUE, 0.0)


def test_a_short_hint_never_retries_sooner_than_the_usual_delay(new_run, github, settings):  # noqa: F811
    settings.WORKER_QUOTA_RETRY_SECONDS = 15
    run = new_run()
    drive(run.id, until="developer")
    github.fail("POST", r"/pulls$", 403, SECONDARY, headers={"Retry-After": "1"})
    assert pipeline.execute_step(stage="tester", run_id=run.id, task_id="t") == (Next.WAIT, 15.0)


def test_a_hint_past_the_maximum_is_capped(new_run, github, settings):  # noqa: F811
    settings.WORKER_QUOTA_RETRY_SECONDS = 15
    settings.STAGE_RETRY_MAX_SECONDS = 300
    run = new_run()
    drive(run.id, until="developer")
    github.fail("POST", r"/pulls$", 403, SECONDARY, headers={"Retry-After": "7200"})
    assert pipeline.execute_step(stage="tester", run_id=run.id, task_id="t") == (Next.WAIT, 300.0)


def test_an_exhausted_primary_limit_waits_for_its_window_to_reset(new_run, github, settings):  # noqa: F811
    settings.WORKER_QUOTA_RETRY_SECONDS = 15
    settings.STAGE_RETRY_MAX_SECONDS = 7200
    run = new_run()
    drive(run.id, until="developer")
    limit = "API rate limit exceeded for installation."
    github.fail("POST", r"/pulls$", 403, limit, headers={"X-RateLimit-Remaining": "0"})
    outcome, wait = pipeline.execute_step(stage="tester", run_id=run.id, task_id="t")
    assert outcome is Next.WAIT
    assert 3000 < wait <= 3600  # the fake's window resets an hour after it started


def test_pending_checks_wait_for_the_polls_hint(new_run, github, settings):  # noqa: F811
    settings.WORKER_QUOTA_RETRY_SECONDS = 1
    settings.GITHUB_CHECKS_WAIT_IN_STAGE = 0
    settings.GITHUB_RATE_LIMIT_RESERVE = 100
    run = new_run()
    drive(run.id, until="tester")
    github.ci_polls = 5
    github.remaining = 50  # below the reserve: the checks are looked at again after the reset
    outcome, wait = pipeline.execute_step(stage="deployer", run_id=run.id, task_id="t")
    assert outcome is Next.WAIT and wait > 60


def test_a_full_worker_quota_keeps_the_fixed_delay(new_run, settings):
    settings.WORKER_QUOTA_RETRY_SECONDS = 15
    settings.MAX_WORKERS = 0
    run = new_run()
    drive(run.id, until="preparer")
    assert pipeline.execute_step(stage="developer", run_id=run.id, task_id="t") == (Next.WAIT, 15.0)
