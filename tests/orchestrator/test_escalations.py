"""Asking a person: a blocked agent, the tests' cap, budgets, expiry and cancel, in this process
against the real database, git and worker processes."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents import services as agent_services
from agents.models import Escalation, WorkerSession
from config.errors import Conflict, NotFound, ValidationFailed
from orchestrator import maintenance
from orchestrator.procs import pids_with_marker, process_state
from orchestrator.runtime.base import SESSION_MARKER
from projects.models import PipelineRun, StageRun
from tests.orchestrator.test_stages_idempotent import drive


def test_a_blocked_agent_asks_and_the_answer_resumes_the_run_with_it(new_run, user):
    agent_services.agent_config_set(role="developer", options={"ask": "Greet in which language?"})
    run = new_run()
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "waiting_human"
    escalation = Escalation.objects.get(run=run)
    assert (escalation.status, escalation.reason, escalation.stage) == ("open", "agent_blocked", "developer")
    assert "«Greet in which language?»" in escalation.question
    assert run.events.filter(type="escalation.raised").exists()
    # The worker costs nothing while it waits.
    session = WorkerSession.objects.get(project=run.project_id)
    assert session.state == "paused" and process_state(int(session.container_id)) == "T"
    assert StageRun.objects.get(run=run, stage="developer").status == "pending"

    agent_services.escalation_answer(escalation_id=escalation.id, user=user, action="guidance", answer="English")
    assert PipelineRun.objects.get(id=run.id).status == "running"
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    developer = StageRun.objects.get(run=run, stage="developer")
    assert developer.attempt == 2
    assert "guidance was received" in developer.output["summary"]  # it says no more than it did


def test_the_tests_cap_asks_with_the_failing_tests_and_guidance_gets_one_more_try(new_run, user):
    agent_services.agent_config_set(role="developer", options={"fail_times": 3})
    run = new_run()
    drive(run.id)
    run.refresh_from_db()
    assert (run.status, run.iteration, run.max_iterations) == ("waiting_human", 4, 3)
    escalation = Escalation.objects.get(run=run, status="open")
    assert escalation.reason == "tests_failing"
    assert "test_greet" in escalation.question and "after 3 tries" in escalation.question
    agent_services.escalation_answer(
        escalation_id=escalation.id, user=user, action="guidance", answer="try a different library"
    )
    drive(run.id)
    run.refresh_from_db()
    assert (run.status, run.iteration) == ("succeeded", 4), run.error_message


def test_an_unanswered_question_expires_fails_the_run_and_ends_its_worker(new_run):
    agent_services.agent_config_set(role="developer", options={"ask": "Which port?"})
    run = new_run()
    drive(run.id)
    escalation = Escalation.objects.get(run=run)
    session = WorkerSession.objects.get(project=run.project_id)
    Escalation.objects.filter(id=escalation.id).update(deadline=timezone.now() - timedelta(seconds=1))
    assert maintenance.escalations_expire() == 1
    run.refresh_from_db()
    assert (run.status, run.error_code) == ("failed", "escalation_expired")
    assert "Nobody answered in time" in run.error_message and "Which port?" in run.error_message
    assert Escalation.objects.get(id=escalation.id).status == "expired"
    assert WorkerSession.objects.get(id=session.id).state == "terminated"
    assert pids_with_marker(SESSION_MARKER, str(session.id)) == []
    drive(run.id)  # Notify still tells the person
    assert "Nobody answered in time" in PipelineRun.objects.get(id=run.id).result_message


def test_cancel_as_an_answer_cancels_the_run_and_the_person_is_told(new_run, user):
    agent_services.agent_config_set(role="developer", options={"ask": "Which port?"})
    run = new_run()
    drive(run.id)
    escalation = Escalation.objects.get(run=run)
    agent_services.escalation_answer(escalation_id=escalation.id, user=user, action="cancel")
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert "cancelled" in run.result_message and "Cancelled by ada" in run.result_message


def test_refused_answers_change_nothing(new_run, user, other_user):
    agent_services.agent_config_set(role="developer", options={"ask": "Which port?"})
    run = new_run()
    drive(run.id)
    escalation = Escalation.objects.get(run=run)
    with pytest.raises(NotFound):
        agent_services.escalation_answer(escalation_id=escalation.id, user=other_user, action="guidance", answer="x")
    with pytest.raises(ValidationFailed):
        agent_services.escalation_answer(escalation_id=escalation.id, user=user, action="guidance", answer="  ")
    for bad in ("-1", "abc", "1e9", "NaN"):
        with pytest.raises(ValidationFailed):
            agent_services.escalation_answer(
                escalation_id=escalation.id, user=user, action="raise_budget", budget_increase_usd=bad
            )
    with pytest.raises(ValidationFailed):
        agent_services.escalation_answer(escalation_id=escalation.id, user=user, action="shrug")
    assert Escalation.objects.get(id=escalation.id).status == "open"
    assert PipelineRun.objects.get(id=run.id).status == "waiting_human"
    agent_services.escalation_answer(
        escalation_id=escalation.id, user=user, action="raise_budget", budget_increase_usd="2.5"
    )
    assert PipelineRun.objects.get(id=run.id).budget_usd == Decimal("7.5")
    with pytest.raises(Conflict):
        agent_services.escalation_answer(escalation_id=escalation.id, user=user, action="cancel")


def test_a_duplicate_task_does_not_run_a_stage_while_the_run_waits(new_run):
    from orchestrator import pipeline

    agent_services.agent_config_set(role="developer", options={"ask": "Which port?"})
    run = new_run()
    drive(run.id)
    assert pipeline.execute(stage="developer", run_id=run.id, task_id="duplicate") is None
    assert StageRun.objects.get(run=run, stage="developer").attempt == 1


def test_an_operator_answers_in_admin(new_run, admin_client):
    agent_services.agent_config_set(role="developer", options={"ask": "Which port?"})
    run = new_run()
    drive(run.id)
    escalation = Escalation.objects.get(run=run)
    page = admin_client.get(f"/admin/agents/escalation/{escalation.id}/change/")
    assert page.status_code == 200 and b"Which port?" in page.content
    response = admin_client.post(
        f"/admin/agents/escalation/{escalation.id}/change/",
        {"reply_action": "guidance", "reply_text": "8080", "reply_budget": ""},
    )
    assert response.status_code == 302
    escalation.refresh_from_db()
    assert (escalation.status, escalation.answer, escalation.answered_by.is_staff) == ("answered", "8080", True)
    assert PipelineRun.objects.get(id=run.id).status == "running"
