"""A release's environment comes from its env contract: missing user secrets make the run wait
for the person, with their names; given, the run goes on and the release gets them, and infra
secrets are generated once. Stages driven in this process, a real release on loopback."""

from __future__ import annotations

import secrets

from agents import services as agent_services
from agents.models import Escalation
from projects.models import Deployment, Project
from secrets_meta import services as secret_services
from secrets_meta.models import SecretMeta
from tests.orchestrator.test_stages_idempotent import drive


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        pairs = [item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


def _with_contract(run, *variables: dict) -> None:
    """What an LLM Architect would plan: a service that needs secrets."""
    project = Project.objects.get(id=run.project_id)
    spec = dict(project.spec)
    spec["env"] = [*spec.get("env", []), *variables]
    Project.objects.filter(id=project.id).update(spec=spec)


def test_missing_user_secrets_make_the_run_wait_and_giving_them_lets_it_go_live(new_run):
    run = new_run()
    drive(run.id, until="tester")
    _with_contract(
        run,
        {"name": "WEATHER_API_KEY", "source": "user_secret", "description": "the weather provider's key"},
        {"name": "SESSION_SECRET", "source": "generated_secret"},
        {"name": "GREETING", "source": "literal", "value": "Hello"},
        {"name": "PUBLIC_URL", "source": "derived"},
    )

    drive(run.id)

    run.refresh_from_db()
    question = Escalation.objects.get(run=run, status="open")
    assert run.status == "waiting_human" and question.reason == "secrets_missing"
    assert "WEATHER_API_KEY" in question.question and f"/api/projects/{run.project_id}/secrets/" in question.question
    assert SecretMeta.objects.get(project_id=run.project_id, key="WEATHER_API_KEY").filled is False
    assert not Deployment.objects.filter(run=run, status="live").exists()

    key = "wk-" + secrets.token_urlsafe(16)
    secret_services.secret_put(project_id=run.project_id, key="WEATHER_API_KEY", value=key, actor="test")
    assert agent_services.escalation_values_provided(project_id=run.project_id) is not None
    drive(run.id)

    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    live = Deployment.objects.get(run=run, status="live")
    env = _environ(live.pid)
    assert env["WEATHER_API_KEY"] == key and env["GREETING"] == "Hello" and env["PUBLIC_URL"] == live.url
    assert len(env["SESSION_SECRET"]) >= 32
    generated = SecretMeta.objects.get(project_id=run.project_id, key="SESSION_SECRET")
    assert generated.kind == "infra" and generated.filled


def test_values_provided_does_nothing_while_a_missing_secret_is_still_missing(new_run):
    run = new_run()
    drive(run.id, until="tester")
    _with_contract(run, {"name": "A_KEY", "source": "user_secret"}, {"name": "B_KEY", "source": "user_secret"})
    drive(run.id)
    secret_services.secret_put(project_id=run.project_id, key="A_KEY", value=secrets.token_urlsafe(16), actor="test")
    assert agent_services.escalation_values_provided(project_id=run.project_id) is None
    assert Escalation.objects.get(run=run).status == "open"
