"""The Developer stage with the claude_code backend, driven in this process against a fake
``claude`` executable in the worker: the ledger, session reuse, the automatic resume, budgets,
and both channels an agent reports on."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from agents import services as agent_services
from agents.models import Usage, WorkerSession
from orchestrator.maintenance import project_teardown
from projects import runs, services
from projects.models import PipelineRun, RunEvent, StageRun
from tests.orchestrator.test_stages_idempotent import drive

FAKE = Path(__file__).resolve().parent.parent / "fakes" / "claude"
HANDLERS = "ROUTES = {}\n"


@pytest.fixture
def claude(transactional_db, settings, tmp_path, live_server):
    """Point the developer role at Claude Code; return a function that sets the fake's scenario."""
    scenario = tmp_path / "scenario.json"
    wrapper = tmp_path / "claude"
    wrapper.write_text(f'#!/bin/sh\nFAKE_CLAUDE_SCENARIO={scenario} exec {FAKE} "$@"\n')
    wrapper.chmod(0o755)
    settings.CLAUDE_BIN = str(wrapper)
    settings.ANTHROPIC_API_KEY = "sk-test-not-a-real-key"
    settings.FACTORY_API_URL = live_server.url
    agent_services.agent_config_set(role="developer", backend="claude_code", model="claude-sonnet-4-5")

    def set_scenario(**fields) -> Path:
        scenario.write_text(json.dumps({"write": {"handlers.py": HANDLERS}, "commit": True, **fields}))
        return scenario

    return set_scenario


@pytest.fixture
def make_run(user):
    projects = []

    def make():
        project, run = services.project_create(owner=user, description="a web service that greets people by name")
        projects.append(project.id)
        return run

    yield make
    for project_id in projects:
        project_teardown(project_id=project_id)


def calls(scenario: Path) -> list[dict]:
    return [json.loads(line) for line in Path(str(scenario) + ".log").read_text().splitlines()]


def test_a_turn_is_written_to_the_ledger_and_the_run_cost(claude, make_run):
    claude(
        cost=0.0123,
        session_id="sess-A",
        usage={
            "input_tokens": 1200,
            "output_tokens": 340,
            "cache_read_input_tokens": 5000,
            "cache_creation_input_tokens": 800,
        },
    )
    run = make_run()
    drive(run.id, until="developer")
    assert StageRun.objects.get(run=run, stage="developer").status == "succeeded"
    usage = Usage.objects.get(stage_run__run=run, role="developer")
    assert (usage.backend, usage.model) == ("claude_code", "claude-sonnet-4-5")
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        1200,
        340,
        5000,
        800,
    )
    assert usage.cost_usd == Decimal("0.012300")
    assert PipelineRun.objects.get(id=run.id).cost_usd == Decimal("0.012300")
    session = WorkerSession.objects.get(project=run.project_id, role="developer")
    assert (session.agent_session_id, session.context_tokens) == ("sess-A", 7000)


def test_the_next_run_of_the_project_resumes_the_agents_session(claude, make_run, user):
    scenario = claude(session_id="sess-A")
    run = make_run()
    drive(run.id, until="developer")
    # Finish the first run so the project may start another; the worker stays (paused).
    project = run.project
    StageRun.objects.filter(run=run).update(status="succeeded")
    PipelineRun.objects.filter(id=run.id).update(status="succeeded")
    second = runs.run_create(project=project, kind="change")
    PipelineRun.objects.filter(id=second.id).update(request="also roll dice")  # what a change carries
    drive(second.id, until="developer")
    argv = calls(scenario)[-1]["argv"]
    assert argv[argv.index("--resume") + 1] == "sess-A"
    assert WorkerSession.objects.filter(project=project, role="developer").count() == 1


def test_an_agent_that_leaves_no_result_is_resumed_once_then_a_person_is_asked(claude, make_run):
    from agents.models import Escalation

    scenario = claude(mode="no_result", session_id="sess-B")
    run = make_run()
    drive(run.id, until="developer")
    run.refresh_from_db()
    assert run.status == "waiting_human"
    escalation = Escalation.objects.get(run=run)
    assert (escalation.reason, escalation.context["code"]) == ("stage_error", "agent_no_result")
    assert "stopped twice without reporting a result" in escalation.question
    made = calls(scenario)
    assert len(made) == 2
    assert "--resume" not in made[0]["argv"]
    assert made[1]["argv"][made[1]["argv"].index("--resume") + 1] == "sess-B"
    assert Usage.objects.filter(stage_run__run=run, role="developer").count() == 2
    # The worker is paused, not left running, while the person is asked.
    assert WorkerSession.objects.get(project=run.project_id, role="developer").state == "paused"


def test_over_budget_the_agent_stops_and_a_person_may_raise_the_budget(claude, make_run, settings, user):
    from agents.models import Escalation

    settings.RUN_BUDGET_USD = 0.01
    scenario = claude(mode="no_result", cost=0.02)
    run = make_run()
    drive(run.id, until="developer")
    run.refresh_from_db()
    assert run.status == "waiting_human"
    assert len(calls(scenario)) == 1  # no automatic resume once the money is gone
    escalation = Escalation.objects.get(run=run)
    assert escalation.reason == "budget"
    assert "run budget is spent ($0.02 of $0.01)" in escalation.question
    claude(cost=0.02)  # the next turn reports its result
    agent_services.escalation_answer(
        escalation_id=escalation.id, user=user, action="raise_budget", budget_increase_usd="1"
    )
    drive(run.id, until="developer")
    assert StageRun.objects.get(run=run, stage="developer").status == "succeeded"
    assert PipelineRun.objects.get(id=run.id).cost_usd == Decimal("0.04")


def test_the_api_key_reaches_the_worker_by_environment_only(claude, make_run):
    scenario = claude()
    run = make_run()
    drive(run.id, until="developer")
    call = calls(scenario)[0]
    assert call["api_key_set"] is True
    assert not any("sk-test" in arg for arg in call["argv"])
    assert "curl" not in " ".join(call["argv"])


def test_channel_two_progress_and_result_through_orchestrator_cli(claude, make_run):
    claude(report="cli", cli=[["progress", "reading TASK.md"], ["progress", "writing handlers"]])
    run = make_run()
    drive(run.id, until="developer")
    developer = StageRun.objects.get(run=run, stage="developer")
    assert developer.status == "succeeded", developer.error
    progress = list(RunEvent.objects.filter(run=run, type="agent.progress").values_list("payload__message", flat=True))
    assert progress == ["reading TASK.md", "writing handlers"]
    assert developer.output["summary"] == "Implemented the task."
