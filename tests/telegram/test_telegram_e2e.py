"""End to end from a chat: a person writes to the bot (webhook), a real Celery worker builds and
deploys the service, and the chat hears every stage and finally where the service runs."""

from __future__ import annotations

import time

import pytest

from agents import services as agent_services
from agents.models import Escalation, WorkerSession
from orchestrator.deploy.local import http
from projects.models import Deployment, OutboundMessage, PipelineRun
from tests.conftest import wait_for_run
from tests.telegram.conftest import ADA_TG, post_update

pytestmark = pytest.mark.e2e


def test_a_person_describes_a_service_in_telegram_and_hears_it_go_live(celery_procs, telegram, client, ada, ada_tg):
    celery_procs.worker(**telegram.worker_env())

    response = post_update(
        client, telegram.make_update(from_user=ada_tg, text="a web service that greets people by name"), deliver=False
    )
    assert response.status_code == 200
    run = PipelineRun.objects.get(project__owner=ada)

    final = telegram.wait_for_sent(lambda s: "Service running at http://127.0.0.1:" in s.text, timeout=180)
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message

    live = Deployment.objects.get(run=run, status="live")
    assert final.chat_id == ADA_TG and final.text == f"Greeter is live.\nService running at {live.url}"
    assert http(live.url + "health")[0] == 200
    texts = telegram.texts_to(ADA_TG)
    assert f"run #{run.id} is queued" in texts[0]  # the bot's answer to the message, before the run's news
    expected = [
        f"Run #{run.id} started",
        "planning the service",
        "preparing the repository",
        "writing the code",
        "running the tests",
        "deploying",
        "Service running at",
    ]
    positions = [next(i for i, t in enumerate(texts) if part in t) for part in expected]
    assert positions == sorted(positions), texts  # in the order it happened
    assert len(texts) == 1 + len(expected), texts  # no chatter beyond the transitions
    deadline = time.monotonic() + 10  # the worker records "sent" just after Telegram answered
    while set(OutboundMessage.objects.values_list("status", flat=True)) != {"sent"}:
        assert time.monotonic() < deadline, list(OutboundMessage.objects.values_list("status", "error"))
        time.sleep(0.1)


def test_an_agents_question_arrives_in_the_chat_and_a_reply_to_it_resumes_the_run(
    celery_procs, telegram, client, ada, ada_tg
):
    agent_services.agent_config_set(role="developer", options={"ask": "Should the greeting be formal?"})
    celery_procs.worker(**telegram.worker_env())
    post_update(
        client, telegram.make_update(from_user=ada_tg, text="a web service that greets people by name"), deliver=False
    )
    run = PipelineRun.objects.get(project__owner=ada)

    question = telegram.wait_for_sent(lambda s: "needs you" in s.text, timeout=120)
    assert "«Should the greeting be formal?»" in question.text
    deadline = time.monotonic() + 10
    carrier = OutboundMessage.objects.filter(escalation__run=run)
    while not carrier.filter(telegram_message_id=question.message_id).exists():
        assert time.monotonic() < deadline, celery_procs.logs()
        time.sleep(0.1)
    assert PipelineRun.objects.get(id=run.id).status == "waiting_human"
    assert WorkerSession.objects.get(project=run.project, role="developer").state == "paused"

    post_update(
        client,
        telegram.make_update(from_user=ada_tg, text="Yes, formal please", reply_to_message_id=question.message_id),
        deliver=False,
    )

    telegram.wait_for_sent(lambda s: s.text == f"Thanks. Run #{run.id} goes on with your answer.", timeout=30)
    telegram.wait_for_sent(lambda s: "Service running at http://127.0.0.1:" in s.text, timeout=180)
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    escalation = Escalation.objects.get(run=run)
    assert (escalation.status, escalation.answer, escalation.answered_by) == ("answered", "Yes, formal please", ada)


def test_an_answer_that_meets_a_429_arrives_after_telegrams_retry_after(celery_procs, telegram, client, ada, ada_tg):
    telegram.rate_limit(retry_after=2)
    celery_procs.worker(**telegram.worker_env())

    post_update(client, telegram.make_update(from_user=ada_tg, text="/help"), deliver=False)

    telegram.wait_for_sent(lambda s: "/status [project]" in s.text, timeout=30)
    limited, delivered = telegram.calls_of("sendMessage")
    assert (limited.status, delivered.status) == (429, 200)
    assert delivered.at - limited.at >= 1.9  # retried by the notify task, after Telegram's retry_after
    assert OutboundMessage.objects.get(chat_id=ADA_TG).attempts == 2
