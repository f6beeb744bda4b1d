"""The operator's console in admin: the overview, a run's timeline, the logs on the pages that need
them, and the habits an operator met (no Add form for system rows, read-only finished runs,
search and filters everywhere, times to the second, short commits, honest answers and actions).

Runs are real: the stages run in this process (``drive``) with the scripted agent in real worker
processes and a real released service on loopback.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from agents import admin as agents_admin
from agents import services as agent_services
from agents.models import Escalation, Role, WorkerSession
from projects import incidents, people
from projects.models import Deployment, OutboundMessage, PipelineRun, StageRun
from secrets_meta import services as secret_services
from tests.orchestrator.test_stages_idempotent import drive

SECRET = "canary-value-for-the-console-7d1f"


@pytest.fixture
def looped_run(new_run):
    """A run whose Developer failed once (its Tester sent it back), then went live."""
    agent_services.agent_config_set(role="developer", options={"fail_times": 1})
    run = new_run()
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    agent_services.usage_record(
        project_id=run.project_id,
        stage_run_id=StageRun.objects.filter(run=run, stage="developer").first().id,
        session_id=None,
        role=Role.DEVELOPER,
        backend="scripted",
        model="scripted-1",
        cost_usd="0.42",
    )
    return run


@pytest.fixture
def waiting_run(new_run, user):
    """A run whose agent asked a question: it waits for a person."""
    agent_services.agent_config_set(role="developer", options={"ask": "Which port?"})
    run = new_run("a web service that echoes text")
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "waiting_human"
    return run


def page_text(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def admin_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- the overview --------------------------------------------------------------------------
def test_the_overview_shows_the_factory_at_a_glance_and_links_to_the_rows(admin_client, looped_run, waiting_run):
    live = Deployment.objects.get(run=looped_run, status="live")
    incident, _ = incidents.incident_open(deployment_id=live.id, reason="health check refused")
    escalation = Escalation.objects.get(run=waiting_run)

    page = page_text(admin_client.get(reverse("admin:overview")))

    # Two runs started in 24 h: one succeeded, one waiting; one of one finished succeeded.
    assert re.search(r'id="figure-runs"><div class="value">2</div>', page)
    assert re.search(r'id="figure-success"><div class="value">100%</div>', page)
    assert "success rate (1 of 1 finished)" in page
    # Description → live URL: the run's creation to its release going live.
    expected = (live.live_at - looped_run.created_at).total_seconds()
    assert "(1 run)" in page and expected > 0
    median = re.search(r'id="figure-to-live"><div class="value">([^<]+)</div>', page).group(1)
    assert median != "–" and median.endswith("s")
    # The cost chart names the project; the table links to its usage rows.
    assert 'class="stacked-bars"' in page and looped_run.project.name in page
    assert f"/admin/agents/usage/?project__id__exact={looped_run.project_id}" in page
    # Incidents and questions, each linking to its row and to the filtered list.
    assert reverse("admin:projects_incident_change", args=[incident.id]) in page
    assert reverse("admin:agents_escalation_change", args=[escalation.id]) in page
    assert "/admin/agents/escalation/?status__exact=open" in page

    # The runs-by-status bars are links to the rows they count.
    succeeded = re.search(r'<a href="([^"]*pipelinerun/\?status__exact=succeeded[^"]*)"', page).group(1)
    listed = page_text(admin_client.get(succeeded.replace("&amp;", "&")))
    assert reverse("admin:projects_pipelinerun_change", args=[looped_run.id]) in listed
    assert reverse("admin:projects_pipelinerun_change", args=[waiting_run.id]) not in listed
    finished = re.search(r'<a href="([^"]+)" id="figure-success"', page).group(1).replace("&amp;", "&")
    listed = page_text(admin_client.get(finished))
    assert reverse("admin:projects_pipelinerun_change", args=[looped_run.id]) in listed
    assert reverse("admin:projects_pipelinerun_change", args=[waiting_run.id]) not in listed
    went_live = re.search(r'<a href="([^"]+)" id="figure-to-live"', page).group(1).replace("&amp;", "&")
    assert reverse("admin:projects_deployment_change", args=[live.id]) in page_text(admin_client.get(went_live))
    incidents_list = page_text(admin_client.get("/admin/projects/incident/?status__in=detected,recovering"))
    assert reverse("admin:projects_incident_change", args=[incident.id]) in incidents_list


def test_the_index_links_the_overview_and_flower(admin_client, settings):
    settings.FLOWER_URL = "http://flower.example.test/"
    page = page_text(admin_client.get(reverse("admin:index")))
    assert reverse("admin:overview") in page
    assert 'href="http://flower.example.test/"' in page


# --- a run's page ----------------------------------------------------------------------------
def test_a_runs_page_draws_its_stages_on_a_time_axis_with_each_iteration(admin_client, looped_run):
    page = page_text(admin_client.get(reverse("admin:projects_pipelinerun_change", args=[looped_run.id])))

    svg = re.search(r'<svg class="run-timeline".*?</svg>', page, re.S).group(0)
    started = StageRun.objects.filter(run=looped_run, started_at__isnull=False).count()
    assert svg.count('class="bar ') == started >= 8  # six stages, developer and tester twice
    for label in ("architect", "developer #1", "tester #1", "developer #2", "tester #2", "deployer", "notify"):
        assert f">{label}</text>" in svg, label
    assert svg.count("bar-failed") == 1  # the first Tester found the bug
    assert re.search(r">\+0(\.0)?s</text>", svg)  # the time axis starts at the first stage


def test_a_finished_runs_page_offers_no_save_no_add_and_no_delete(admin_client, looped_run):
    page = page_text(admin_client.get(reverse("admin:projects_pipelinerun_change", args=[looped_run.id])))
    assert 'name="_save"' not in page and 'name="_continue"' not in page
    # No row can be added to or removed from its inlines (the admin's script draws "Add another"
    # only below MAX_NUM_FORMS), and nothing is a form field.
    assert 'name="stages-MAX_NUM_FORMS" value="0"' in page and 'name="events-MAX_NUM_FORMS" value="0"' in page
    assert "-DELETE" not in page and "<textarea" not in page
    assert reverse("admin:projects_pipelinerun_delete", args=[looped_run.id]) not in page
    # The inlines are there, read-only.
    assert "<p>Architect</p>" in page and "<p>Deployed</p>" in page


def test_rows_only_the_system_makes_have_no_add_form(admin_client, looped_run):
    system_made = ["projects_project", "projects_pipelinerun", "projects_deployment", "agents_workersession"]
    for model in [*system_made, "agents_usage"]:
        assert admin_client.get(reverse(f"admin:{model}_add")).status_code == 403, model
        assert reverse(f"admin:{model}_add") not in page_text(admin_client.get(reverse(f"admin:{model}_changelist")))


def test_every_list_of_the_factory_has_search_and_filters(admin_client, looped_run):
    ours = [m for m in admin.site._registry if m._meta.app_label in ("projects", "agents", "secrets_meta")]
    assert len(ours) >= 12
    for model in ours:
        model_admin = admin.site._registry[model]
        name = f"{model._meta.app_label}.{model._meta.model_name}"
        assert model_admin.search_fields, f"{name} has no search"
        assert model_admin.list_filter, f"{name} has no filters"
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert admin_client.get(url, {"q": "greeter"}).status_code == 200, name


def test_times_show_to_the_second_and_commits_short(admin_client, looped_run):
    live = Deployment.objects.get(run=looped_run, status="live")
    runs_page = page_text(admin_client.get(reverse("admin:projects_pipelinerun_changelist")))
    local = timezone.localtime(looped_run.created_at)
    assert local.strftime("%Y-%m-%d %H:%M:%S") in runs_page

    releases = page_text(admin_client.get(reverse("admin:projects_deployment_changelist")))
    assert f'<code title="{live.commit_sha}">{live.commit_sha[:10]}</code>' in releases
    assert f">{live.commit_sha}<" not in releases


# --- logs where the operator needs them -------------------------------------------------------
def test_a_releases_page_shows_its_output_with_secret_values_redacted(admin_client, looped_run):
    live = Deployment.objects.get(run=looped_run, status="live")
    secret_services.secret_put(project_id=looped_run.project_id, key="API_KEY", value=SECRET, actor="test")
    log = Path(live.release_dir).parent / f"{Path(live.release_dir).name}.log"
    printed = log.read_text(errors="replace").strip().splitlines()
    assert printed, "the release printed nothing"
    with open(log, "a") as out:  # the release prints a value it was given
        out.write(f"connecting with key {SECRET}\n")

    page = page_text(admin_client.get(reverse("admin:projects_deployment_change", args=[live.id])))

    output = re.search(r'<pre class="release-log"[^>]*>(.*?)</pre>', page, re.S).group(1)
    assert "connecting with key [secret:API_KEY]" in output
    assert SECRET not in page
    assert printed[-1][:40].replace("&", "&amp;").replace('"', "&quot;").replace("'", "&#x27;")[:20] in output


def test_a_workers_page_shows_what_its_agent_last_said(admin_client, looped_run):
    session = WorkerSession.objects.get(project=looped_run.project_id, role="developer")
    developer = StageRun.objects.filter(run=looped_run, stage="developer").order_by("-iteration").first()
    summary = developer.output["summary"]
    assert summary

    page = page_text(admin_client.get(reverse("admin:agents_workersession_change", args=[session.id])))

    said = re.search(r'<pre class="agent-output"[^>]*>(.*?)</pre>', page, re.S).group(1)
    assert "developer #2: succeeded" in said
    assert f"summary: {summary}"[:60].replace("'", "&#x27;").replace('"', "&quot;") in said


@contextmanager
def log_file(path: Path):
    """The real logging configuration with LOG_FILE set; the previous one put back."""
    import logging

    from config.logging import configure_logging

    saved_config, root = structlog.get_config(), logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(json=False, level="INFO", file=str(path))
    try:
        yield path
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        structlog.configure(**saved_config)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_a_runs_log_lines_are_found_by_its_id(admin_client, new_run, settings, tmp_path):
    settings.LOG_FILE = str(tmp_path / "logs" / "factory.jsonl")
    with log_file(Path(settings.LOG_FILE)):
        other = new_run("a web service that echoes text")
        drive(other.id, until="architect")
        run = new_run()
        secret_services.secret_put(project_id=run.project_id, key="API_KEY", value=SECRET, actor="test")
        drive(run.id, until="preparer")
        with structlog.contextvars.bound_contextvars(run_id=run.id, stage="preparer"):
            structlog.get_logger("test").info("operator_check", detail=f"key is {SECRET}")

    lines = [json.loads(line) for line in Path(settings.LOG_FILE).read_text().splitlines()]
    assert {line.get("run_id") for line in lines} >= {run.id, other.id}
    assert SECRET not in Path(settings.LOG_FILE).read_text()

    page = page_text(admin_client.get(reverse("admin:projects_pipelinerun_change", args=[run.id])))

    shown = re.search(r'<pre class="run-log"[^>]*>(.*?)</pre>', page, re.S).group(1)
    ours = [line for line in lines if line.get("run_id") == run.id]
    assert len(shown.strip().splitlines()) == len(ours)
    assert "operator_check" in shown and "key is [secret:API_KEY]" in shown
    assert "stage=preparer" in shown
    assert f"run_id={other.id}" not in shown


def test_without_a_log_file_the_run_page_says_how_to_get_one(admin_client, looped_run, settings):
    settings.LOG_FILE = ""
    page = page_text(admin_client.get(reverse("admin:projects_pipelinerun_change", args=[looped_run.id])))
    assert "set LOG_FILE" in page


# --- answering, acting, deleting ----------------------------------------------------------------
def test_empty_guidance_shows_only_the_error(admin_client, waiting_run):
    escalation = Escalation.objects.get(run=waiting_run)
    url = reverse("admin:agents_escalation_change", args=[escalation.id])

    response = admin_client.post(url, {"reply_action": "guidance", "reply_text": "  ", "reply_budget": ""})

    page = page_text(response)  # the form again, with the error
    assert "Guidance needs some text for the agent." in page
    assert "changed successfully" not in page
    assert not [m for m in admin_messages(response) if "success" in m]
    escalation.refresh_from_db()
    assert escalation.status == "open"


def test_an_answer_the_service_refuses_is_shown_alone(admin_client, waiting_run):
    escalation = Escalation.objects.get(run=waiting_run)
    url = reverse("admin:agents_escalation_change", args=[escalation.id])
    form = {"reply_action": "raise_budget", "reply_text": "", "reply_budget": "100000"}

    response = admin_client.post(url, form, follow=True)

    said = admin_messages(response)
    assert len(said) == 1 and "budget increase must be between" in said[0], said
    assert "changed successfully" not in response.content.decode()
    assert Escalation.objects.get(id=escalation.id).status == "open"


def test_an_operators_answer_is_told_to_the_person_in_telegram(admin_client, waiting_run, user):
    people.account_link(user=user, telegram_user_id=777001, chat_id=777001, username="ada")
    escalation = Escalation.objects.get(run=waiting_run)
    url = reverse("admin:agents_escalation_change", args=[escalation.id])

    response = admin_client.post(url, {"reply_action": "guidance", "reply_text": "Use 8080", "reply_budget": ""})

    assert response.status_code == 302
    escalation.refresh_from_db()
    assert (escalation.status, escalation.answer) == ("answered", "Use 8080")
    told = OutboundMessage.objects.filter(account__user=user, text__contains="an operator answered")
    assert told.count() == 1
    assert "Use 8080" in told.get().text and f"run #{waiting_run.id}" in told.get().text
    said = admin_messages(admin_client.get(response["Location"]))
    assert any(f"Answered question #{escalation.id}" in m for m in said), said


def test_the_person_answering_their_own_question_is_not_told_about_it(waiting_run, user):
    people.account_link(user=user, telegram_user_id=777002, chat_id=777002, username="ada")
    escalation = Escalation.objects.get(run=waiting_run)
    agent_services.escalation_answer(escalation_id=escalation.id, user=user, action="guidance", answer="8080")
    assert not OutboundMessage.objects.filter(text__contains="an operator answered").exists()


def test_a_worker_action_nobody_carries_out_says_so(admin_client, looped_run, monkeypatch):
    monkeypatch.setattr(agents_admin, "ACTION_WAIT_SECONDS", 0.5)
    session = WorkerSession.objects.get(project=looped_run.project_id, role="developer")
    assert session.state == "paused"
    changelist = reverse("admin:agents_workersession_changelist")

    paused = admin_client.post(changelist, {"action": "pause_workers", "_selected_action": [session.id]}, follow=True)
    resumed = admin_client.post(changelist, {"action": "resume_workers", "_selected_action": [session.id]}, follow=True)

    assert admin_messages(paused) == [f"Worker #{session.id} is paused: nothing to pause."]
    (said,) = admin_messages(resumed)
    assert "no Celery worker acted on it" in said  # no Celery worker runs in this test


def test_terminating_workers_asks_first(admin_client, looped_run):
    session = WorkerSession.objects.get(project=looped_run.project_id, role="developer")
    changelist = reverse("admin:agents_workersession_changelist")
    page = page_text(admin_client.post(changelist, {"action": "terminate_workers", "_selected_action": [session.id]}))
    assert "Terminate these workers?" in page and 'name="confirm"' in page
    assert WorkerSession.objects.get(id=session.id).state == "paused"


def test_deleting_a_live_project_warns_that_it_is_live(admin_client, looped_run):
    live = Deployment.objects.get(run=looped_run, status="live")
    response = admin_client.get(reverse("admin:projects_project_delete", args=[looped_run.project_id]))
    said = admin_messages(response)
    assert any(f"is live at {live.url}" in m for m in said), said

    bulk = admin_client.post(
        reverse("admin:projects_project_changelist"),
        {"action": "delete_selected", "_selected_action": [looped_run.project_id]},
    )
    assert any("is live at" in m for m in admin_messages(bulk))


def test_cancel_and_rerun_runs_report_each_run(admin_client, waiting_run, looped_run):
    changelist = reverse("admin:projects_pipelinerun_changelist")
    asked = page_text(admin_client.post(changelist, {"action": "cancel_runs", "_selected_action": [waiting_run.id]}))
    assert "Cancel these runs?" in asked
    form = {"action": "cancel_runs", "_selected_action": [waiting_run.id, looped_run.id], "confirm": "1"}
    done = admin_client.post(changelist, form, follow=True)
    said = admin_messages(done)
    assert any(m.startswith(f"run #{waiting_run.id}") and "cancelled" in m for m in said), said
    assert any(m.startswith(f"run #{looped_run.id}") and "already succeeded" in m for m in said), said
    assert PipelineRun.objects.get(id=waiting_run.id).status == "cancelled"

    form = {"action": "rerun", "_selected_action": [waiting_run.id], "confirm": "1"}
    rerun = admin_client.post(changelist, form, follow=True)
    (said,) = admin_messages(rerun)
    again = PipelineRun.objects.filter(project_id=waiting_run.project_id).exclude(id=waiting_run.id).get()
    assert f">#{again.id}</a> started" in said and again.status == "queued" and again.kind == waiting_run.kind


def test_static_files_are_served_by_the_app(client):
    """Admin has its CSS under runserver and gunicorn alike (WhiteNoise, no collectstatic needed)."""
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert b"body" in b"".join(response.streaming_content if response.streaming else [response.content])
