"""The factory's chat about a live project: /change, /rollback, and /status with how it is (US3, US4)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.scripted.catalogue import plan
from projects import deployments, incidents, runs, services
from projects.models import Deployment, IncidentEvent, PipelineRun, Stage
from tests.telegram.conftest import ADA_TG, post_update

pytestmark = pytest.mark.django_db

GREETER = "a web service that greets people by name"


def _planned(user, description=GREETER):
    project, run = services.project_create(owner=user, description=description)
    for stage in [s.value for s in Stage]:
        claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=f"t-{run.id}-{stage}")
        if stage == Stage.NOTIFY:
            runs.run_succeed(run_id=run.id, result_message="It is live.")
        runs.stage_succeed(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={})
    return services.project_set_spec(project_id=project.id, spec=plan(description))


def _say(client, telegram, ada_tg, text: str) -> str:
    """The factory's answer (the last message sent: an incident's news may go out before it)."""
    before = len(telegram.texts_to(ADA_TG))
    post_update(client, telegram.make_update(from_user=ada_tg, text=text))
    texts = telegram.texts_to(ADA_TG)[before:]
    assert texts, "no answer"
    return texts[-1]


def test_change_of_a_persons_only_project_starts_a_change_run(client, telegram, ada, ada_tg):
    project = _planned(ada)

    reply = _say(client, telegram, ada_tg, "/change also roll dice")

    run = PipelineRun.objects.get(project=project, kind="change")
    assert run.request == "also roll dice"
    assert reply.startswith(f"Got it: run #{run.id} changes Greeter.")


def test_change_names_the_project_when_the_person_has_several(client, telegram, ada, ada_tg):
    greeter, echo = _planned(ada), _planned(ada, "a service that echoes text")

    refused = _say(client, telegram, ada_tg, "/change also roll dice")
    assert "You have several projects: name one." in refused
    assert not PipelineRun.objects.filter(kind="change").exists()

    _say(client, telegram, ada_tg, f"/change {greeter.slug} also roll dice")
    _say(client, telegram, ada_tg, f"/change #{echo.id} also roll dice")
    assert set(PipelineRun.objects.filter(kind="change").values_list("project_id", flat=True)) == {greeter.id, echo.id}


def test_change_while_a_run_is_in_progress_says_so(client, telegram, ada, ada_tg):
    project = _planned(ada)
    _say(client, telegram, ada_tg, "/change also roll dice")

    reply = _say(client, telegram, ada_tg, f"/change {project.id} also echo text")

    assert "is in progress" in reply or "already has a run in progress" in reply
    assert PipelineRun.objects.filter(project=project, kind="change").count() == 1


def test_change_without_words_says_what_to_write(client, telegram, ada, ada_tg):
    _planned(ada)
    assert "Describe the change you want" in _say(client, telegram, ada_tg, "/change")


def test_rollback_without_a_live_release_says_so(client, telegram, ada, ada_tg):
    project = _planned(ada)
    assert _say(client, telegram, ada_tg, f"/rollback {project.id}") == "The project has no live release to roll back."
    assert "can't find a project" in _say(client, telegram, ada_tg, "/rollback nope")


def test_status_tells_uptime_probe_resources_and_the_last_day(client, telegram, ada, ada_tg):
    project = _planned(ada)
    run = PipelineRun.objects.get(project=project)
    deployment = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha="c" * 40)
    deployments.deployment_go_live(deployment_id=deployment.id, url="http://greeter.example/")
    Deployment.objects.filter(id=deployment.id).update(live_at=timezone.now() - timedelta(hours=3, minutes=5))
    deployments.deployment_probed(deployment_id=deployment.id, ok=True, ms=12, detail="healthy")
    services.deployment_set_usage(deployment_id=deployment.id, cpu_percent=1.5, memory_bytes=24 * 2**20)
    incident, _ = incidents.incident_open(deployment_id=deployment.id, reason="the release's process is gone")
    incidents.incident_step(incident_id=incident.id, type=IncidentEvent.Type.RESTARTING, restarted=True)

    reply = _say(client, telegram, ada_tg, f"/status {project.id}")

    assert "Up for 3h 5m" in reply
    assert "Last probe: healthy in 12 ms at " in reply
    assert "CPU 1.5%, memory 24 MB" in reply
    assert "Last 24 h: 1 incident, 1 restart" in reply
    assert "Cost so far: $0.00" in reply
    assert "Live: http://greeter.example/" in reply
