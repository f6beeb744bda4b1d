"""Redaction: a canary value stored through the vault, then logged (structlog and stdlib, in an
f-string and as a field, in a traceback), comes out as ``[secret:NAME]``; what agents say is
redacted before it is stored, in a process that never read the value too."""

from __future__ import annotations

import io
import json
import logging
import secrets
from contextlib import contextmanager

import pytest
import structlog

from agents import services as agent_services
from agents.backends.base import AgentTurn, redact_turn
from agents.contracts import AgentResult
from config.logging import configure_logging
from projects.models import RunEvent
from secrets_meta import redaction, services
from secrets_meta.stores import BOTS_SCOPE, get_store

pytestmark = pytest.mark.django_db


def canary() -> str:
    return "canary-" + secrets.token_urlsafe(18)


@contextmanager
def logging_into(buffer: io.StringIO, *, json: bool):
    """The real logging configuration, writing to ``buffer``; the previous one is put back."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(json=json, level="INFO", stream=buffer)
    try:
        yield buffer
    finally:
        structlog.configure(**saved_config)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@pytest.fixture
def captured():
    with logging_into(io.StringIO(), json=True) as buffer:
        yield buffer


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_redact_replaces_every_known_value_with_its_name():
    redaction.register("API_KEY", "sk-live-123456")
    redaction.register("SHORT", "abc12")  # under 6 characters: left alone

    text = "key=sk-live-123456 again sk-live-123456, short abc12"

    assert redaction.redact(text) == "key=[secret:API_KEY] again [secret:API_KEY], short abc12"
    assert redaction.redact("") == "" and redaction.redact("nothing here") == "nothing here"


def test_of_two_overlapping_values_the_longer_wins():
    redaction.register("SHORTER", "password1")
    redaction.register("LONGER", "password1-and-more")
    assert redaction.redact("x password1-and-more y password1") == "x [secret:LONGER] y [secret:SHORTER]"


def test_redact_data_walks_nested_structures():
    redaction.register("TOKEN", "tok-987654321")
    data = {"a": ["tok-987654321", ("tok-987654321", 3)], "b": {"c": "see tok-987654321"}, "n": None}
    assert redaction.redact_data(data) == {
        "a": ["[secret:TOKEN]", ("[secret:TOKEN]", 3)],
        "b": {"c": "see [secret:TOKEN]"},
        "n": None,
    }


def test_a_stored_canary_logged_through_structlog_comes_out_redacted(project, captured):
    value = canary()
    services.secret_put(project_id=project.id, key="CANARY", value=value, actor="user:1")
    log = structlog.get_logger("tests.canary")

    log.info(f"the canary is {value}", canary=value, nested={"list": [value]})
    try:
        raise RuntimeError(f"failed with {value}")
    except RuntimeError:
        log.exception("with_traceback")

    output = captured.getvalue()
    assert value not in output
    first, second = lines(captured)[-2:]
    assert first["event"] == "the canary is [secret:CANARY]"
    assert first["canary"] == "[secret:CANARY]" and first["nested"] == {"list": ["[secret:CANARY]"]}
    assert "[secret:CANARY]" in second["exception"]


def test_a_stored_canary_logged_through_stdlib_logging_comes_out_redacted(project, captured):
    value = canary()
    services.secret_put(project_id=project.id, key="CANARY", value=value, actor="user:1")
    log = logging.getLogger("tests.stdlib")

    log.warning(f"f-string {value}")
    log.warning("args %s", value)
    log.error("extra", extra={"canary": value})  # not rendered at all (no ExtraAdder)
    try:
        {}[value]
    except KeyError:
        log.exception("traceback")

    output = captured.getvalue()
    assert value not in output
    events = [line["event"] for line in lines(captured)]
    assert "f-string [secret:CANARY]" in events and "args [secret:CANARY]" in events
    assert "KeyError: '[secret:CANARY]'" in lines(captured)[-1]["exception"]


def test_the_console_renderer_is_redacted_too(project):
    value = canary()
    services.secret_put(project_id=project.id, key="CANARY", value=value, actor="user:1")
    with logging_into(io.StringIO(), json=False) as buffer:
        structlog.get_logger("tests.console").info("shown", canary=value)
        try:
            raise RuntimeError(value)
        except RuntimeError:
            structlog.get_logger("tests.console").exception("failed")
    assert value not in buffer.getvalue() and buffer.getvalue().count("[secret:CANARY]") >= 2


def test_a_value_read_from_the_store_is_known(project):
    value = canary()
    services.secret_put(project_id=project.id, key="CANARY", value=value, actor="user:1")
    redaction.forget_all()  # a fresh process
    assert redaction.redact(value) == value

    services.release_environment(project_id=project.id, env=[], computed={})

    assert redaction.redact(value) == "[secret:CANARY]"


def test_load_project_teaches_a_fresh_process_the_projects_values_and_bot_token(project):
    value, token = canary(), "123456:" + secrets.token_urlsafe(27)
    services.secret_put(project_id=project.id, key="CANARY", value=value, actor="user:1")
    get_store().put(BOTS_SCOPE, "123456", token)
    from secrets_meta.models import BotToken

    BotToken.objects.create(bot_id=123456, username="greeter_bot", status="assigned", project=project, created_by="t")
    redaction.forget_all()

    redaction.load_project(project.id)

    assert redaction.redact(f"{value} {token}") == "[secret:CANARY] [secret:TELEGRAM_BOT_TOKEN]"


def test_load_project_reads_the_store_again_only_when_it_changed(project, django_assert_num_queries):
    services.secret_put(project_id=project.id, key="ONE", value="value-number-one", actor="user:1")
    redaction.forget_all()
    redaction.load_project(project.id)

    with django_assert_num_queries(2):  # the version marker and the bots: nothing decrypted
        redaction.load_project(project.id)

    services.secret_put(project_id=project.id, key="TWO", value="value-number-two", actor="user:1")
    redaction.forget_all()
    redaction._loaded[project.id] = "stale"
    redaction.load_project(project.id)
    assert redaction.redact("value-number-two") == "[secret:TWO]"


def test_what_an_agent_said_is_redacted_in_its_turn():
    redaction.register("CANARY", "canary-turn-value")
    turn = AgentTurn(
        result=AgentResult(status="blocked", summary="used canary-turn-value", question="is canary-turn-value ok?"),
        log="env: canary-turn-value",
        problem="saw canary-turn-value",
    )

    redact_turn(turn)

    assert turn.log == "env: [secret:CANARY]" and turn.problem == "saw [secret:CANARY]"
    assert turn.result.summary == "used [secret:CANARY]" and turn.result.question == "is [secret:CANARY] ok?"


def _running_session(project):
    run = project.runs.first()
    session = agent_services.session_create(
        project_id=project.id, run_id=run.id, role="developer", runtime="process", workspace_root="/nonexistent"
    )
    agent_services.session_set_state(session_id=session.id, state="running", reason="test")
    session.refresh_from_db()
    return run, session


def test_progress_questions_and_results_from_a_worker_are_stored_redacted_in_a_fresh_process(project):
    value = canary()
    services.secret_put(project_id=project.id, key="CANARY", value=value, actor="user:1")
    run, session = _running_session(project)
    redaction.forget_all()  # the web process that serves the worker API never read the value

    agent_services.worker_progress(session=session, message=f"printed {value}")
    agent_services.worker_ask(session=session, question=f"should I use {value}?")
    agent_services.session_report_result(
        session_id=session.id, result=AgentResult(status="failed", summary=f"gave up on {value}")
    )

    payloads = list(RunEvent.objects.filter(run=run, type__startswith="agent.").values_list("payload", flat=True))
    assert [p.get("message") or p.get("question") for p in payloads] == [
        "printed [secret:CANARY]",
        "should I use [secret:CANARY]?",
    ]
    session.refresh_from_db()
    assert session.reported_result["summary"] == "gave up on [secret:CANARY]"
    assert value not in json.dumps(payloads) + json.dumps(session.reported_result)


def test_issuing_a_worker_token_teaches_the_process_the_projects_values(project):
    value = canary()
    services.secret_put(project_id=project.id, key="CANARY", value=value, actor="user:1")
    run, session = _running_session(project)
    redaction.forget_all()

    agent_services.session_issue_token(session_id=session.id, run_id=run.id)

    assert redact_turn(AgentTurn(result=None, log=value)).log == "[secret:CANARY]"
