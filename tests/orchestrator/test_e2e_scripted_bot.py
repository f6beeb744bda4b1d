"""End to end through a real Celery worker: a description of a Telegram bot is planned, scaffolded
from templates/telegram_bot, implemented by the scripted Developer (wrong once on purpose) and
tested by the Tester in the bot's own worker, repair loop included. The Deployer's part for bots
is tested with the deploy code (tests/orchestrator/test_bot_deploy.py)."""

from __future__ import annotations

import json
import time

import pytest

from agents import services as agent_services
from orchestrator.git import bare_repo_path, git
from projects import services
from projects.models import StageRun

pytestmark = pytest.mark.e2e


def _wait_for_stage_success(run_id: int, stage: str, procs, timeout: float = 180) -> StageRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = StageRun.objects.filter(run_id=run_id, stage=stage, status="succeeded").first()
        if done is not None:
            return done
        time.sleep(0.25)
    stages = list(StageRun.objects.filter(run_id=run_id).values_list("stage", "iteration", "status", "error_message"))
    raise AssertionError(f"{stage} of run {run_id} did not succeed in {timeout}s: {stages}\n{procs.logs()}")


def test_a_bot_description_is_planned_scaffolded_implemented_and_tested(celery_procs, user):
    agent_services.agent_config_set(role="developer", options={"fail_times": 1})
    celery_procs.worker()
    project, run = services.project_create(owner=user, description="a telegram bot that greets people by name")

    tester = _wait_for_stage_success(run.id, "tester", celery_procs)

    project.refresh_from_db()
    assert (project.kind, project.spec["kind"], project.slug) == ("telegram_bot", "telegram_bot", "greeter-bot")
    assert [check["send"] for check in project.spec["conversation"]] == ["/start", "/hello Ada"]
    assert project.spec["env"] == [
        {
            "name": "TELEGRAM_BOT_TOKEN",
            "source": "bot_token",
            "description": "The bot's token: one from the factory's bot pool, or the person's own.",
            "value": None,
        }
    ]
    stages = dict(
        StageRun.objects.filter(run=run, iteration=1, stage__in=["architect", "preparer"]).values_list(
            "stage", "status"
        )
    )
    assert stages == {"architect": "succeeded", "preparer": "succeeded"}
    # The first implementation was wrong on purpose: its tests failed and the Developer tried again.
    testers = list(
        StageRun.objects.filter(run=run, stage="tester").order_by("iteration").values_list("iteration", "status")
    )
    assert testers[:2] == [(1, "failed"), (2, "succeeded")]
    failed = StageRun.objects.get(run=run, stage="tester", iteration=1).output["report"]
    assert any("test_hello" in test["name"] for test in failed["failing"])
    report = tester.output["report"]
    assert report["failed"] == report["errors"] == 0 and report["passed"] >= 15
    # The branch holds the bot's template and the scripted bot handlers.
    branch = StageRun.objects.get(run=run, stage="preparer").output["branch"]
    bare = bare_repo_path(project.slug)
    start = json.loads(git("show", f"{branch}:factory.json", cwd=bare).stdout)
    assert start == {"start": ["python", "app.py"], "health": "/health", "kind": "telegram_bot"}
    handlers = git("show", f"{branch}:handlers.py", cwd=bare).stdout
    assert "register_greet(bot)" in handlers
    task = git("show", f"{branch}:TASK.md", cwd=bare).stdout
    assert "a person sends `/hello Ada`; the reply contains `Hello, Ada!`" in task
