"""The operator's console in a real browser: Debian's Chromium driven by Playwright (no browser
download), against the admin served by a live server, with a real Celery worker running the
pipeline, pausing and resuming real worker processes and taking the answer to a question.

Every page must answer without a server error and without an error in the browser's console.
A screenshot of each page is kept under ``var/test-artifacts/browser/`` (or
``$FACTORY_TEST_ARTIFACTS/browser/``) for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from django.contrib import admin
from django.db import connections
from django.urls import reverse

from agents import services as agent_services
from agents.models import Escalation, WorkerSession
from projects import incidents, services
from projects.models import Deployment, PipelineRun
from tests.conftest import ROOT, wait_for_run

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "console-pw-4711"


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true, yet Chromium is not installed (scripts/test installs it)")
        pytest.skip("Chromium is not installed (apt-get install chromium; scripts/test does it)")
    return path


ARTIFACTS = Path(os.environ.get("FACTORY_TEST_ARTIFACTS") or ROOT / "var" / "test-artifacts") / "browser"


class Console:
    """One logged-in browser page; records every server error and console error it meets."""

    def __init__(self, page, base_url: str):
        self.page, self.base_url = page, base_url
        self.problems: list[str] = []
        self.shots: list[Path] = []
        page.on("console", lambda msg: msg.type == "error" and self.problems.append(f"console: {msg.text}"))
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"{r.status} from {r.url}"))

    def open(self, path: str, shot: str):
        response = self.page.goto(self.base_url + path)
        assert response is not None and response.status < 400, f"{path}: {response and response.status}"
        self.page.wait_for_load_state("load")
        self.screenshot(shot)
        return response

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{len(self.shots):02d}-{re.sub(r'[^a-z0-9_.-]+', '-', name.lower())}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)

    def messages(self) -> list[str]:
        return [text.strip() for text in self.page.locator("ul.messagelist li").all_inner_texts()]

    def act(self, changelist: str, row_id: int, action: str, *, confirm: str | None = None) -> list[str]:
        """Select one row, run an admin action (confirming it when asked), return the messages."""
        self.page.goto(self.base_url + changelist)
        self.page.check(f'input[name="_selected_action"][value="{row_id}"]')
        self.page.select_option('select[name="action"]', action)
        self.page.click('button[name="index"]')
        self.page.wait_for_load_state("load")
        if confirm:
            self.screenshot(f"confirm-{action}")
            self.page.click(f'input[type="submit"][value="{confirm}"]')
            self.page.wait_for_load_state("load")
        self.screenshot(f"after-{action}")
        return self.messages()


@pytest.fixture
def browser_page(live_server, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()
            # ORM calls made while Playwright's event loop runs in this thread get a connection of
            # their own (Django's connections are context-local): closed here, or the test
            # database cannot be dropped at the end of the session.
            connections.close_all()


def wait_for(predicate, what: str, timeout: float = 120, procs=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}\n{procs.logs() if procs else ''}"
        time.sleep(0.25)


def test_the_console_in_a_browser(celery_procs, live_server, browser_page, user, django_user_model, settings):
    settings.FLOWER_URL = "http://127.0.0.1:5555/"
    # The worker appends its log lines to the shared file; the run's page finds them by run_id.
    settings.LOG_FILE = str(celery_procs.home / "logs" / "factory.jsonl")
    celery_procs.worker(LOG_FILE=settings.LOG_FILE)
    # A project that goes live, and one whose agent asks a question.
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    release = Deployment.objects.get(project=project, status="live")
    incidents.incident_open(deployment_id=release.id, reason="health check refused (a test)")
    agent_services.agent_config_set(role="developer", options={"ask": "Which port should it listen on?"})
    asking, asking_run = services.project_create(owner=user, description="a web service that echoes text")
    wait_for(
        lambda: Escalation.objects.filter(run=asking_run, status="open").exists(), "no question", procs=celery_procs
    )
    django_user_model.objects.create_superuser(username="operator", password=PASSWORD)

    console = Console(browser_page, live_server.url)
    page = browser_page
    console.open("/admin/login/", "login")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click('input[type="submit"]')
    page.wait_for_url(re.compile(r".*/admin/$"))
    console.screenshot("index")
    # Admin has its styles (static files are served).
    assert page.evaluate("getComputedStyle(document.querySelector('#header')).backgroundColor") not in (
        "rgba(0, 0, 0, 0)",
        "",
    )
    assert page.locator("#console-links a", has_text="Overview").count() == 1
    assert page.locator("#console-links a", has_text="Flower").get_attribute("href") == settings.FLOWER_URL

    # The overview: figures, charts, and links that lead to the rows.
    page.click("#console-links a:text('Overview')")
    page.wait_for_load_state("load")
    console.screenshot("overview")
    assert page.locator("#figure-runs .value").inner_text() == "2"
    assert page.locator("#figure-success .value").inner_text() == "100%"
    assert page.locator("#runs-by-status svg a").count() == len(PipelineRun.Status.choices)
    assert page.locator("#open-incidents a[href*='/admin/projects/incident/']").count() >= 1
    page.click("#waiting-escalations tbody a")
    page.wait_for_load_state("load")
    console.screenshot("escalation-from-overview")
    assert "Which port should it listen on?" in page.content()

    # Every list, and one page of each (the first row's).
    for model in admin.site._registry:
        opts = model._meta
        name = f"{opts.app_label}.{opts.model_name}"
        console.open(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"), f"list-{name}")
        first = page.locator("#result_list tbody tr th a, #result_list tbody tr td.field-id a").first
        if first.count():
            first.click()
            page.wait_for_load_state("load")
            console.screenshot(f"page-{name}")
    run_page = reverse("admin:projects_pipelinerun_change", args=[run.id])
    console.open(run_page, "run-timeline")
    assert page.locator("svg.run-timeline rect.bar").count() >= 6
    page.click("summary:has-text('Log lines')")
    log_lines = page.locator("pre.run-log").inner_text()
    assert "stage=architect" in log_lines and "stage=deployer" in log_lines, log_lines[:2000]
    console.screenshot("run-log-lines")
    console.open(reverse("admin:projects_deployment_change", args=[release.id]), "release-output")
    assert page.locator("pre.release-log").count() == 1

    # Worker actions on a live worker: the finished run's Developer worker is paused.
    session = WorkerSession.objects.get(project=project, role="developer")
    assert session.state == "paused"
    workers = reverse("admin:agents_workersession_changelist")
    said = console.act(workers, session.id, "resume_workers")
    assert any(f"Worker #{session.id}: paused → running" in m for m in said), said
    said = console.act(workers, session.id, "pause_workers")
    assert any(f"Worker #{session.id}: running → paused" in m for m in said), said
    said = console.act(workers, session.id, "terminate_workers", confirm="Terminate")
    assert any(f"Worker #{session.id}: paused → terminated" in m for m in said), said
    assert WorkerSession.objects.get(id=session.id).state == "terminated"

    # Answer the question; the run goes on.
    escalation = Escalation.objects.get(run=asking_run, status="open")
    console.open(reverse("admin:agents_escalation_change", args=[escalation.id]), "answer-question")
    page.select_option("#id_reply_action", "guidance")
    page.fill("#id_reply_text", "Port 8080, please.")
    page.click('input[name="_save"]')
    page.wait_for_load_state("load")
    console.screenshot("answered")
    said = console.messages()
    assert any(f"Answered question #{escalation.id}" in m for m in said), said
    assert not any("changed successfully" in m for m in said)
    escalation.refresh_from_db()
    assert (escalation.status, escalation.answer) == ("answered", "Port 8080, please.")

    assert not console.problems, "\n".join(console.problems)
    assert len(console.shots) >= 2 * 10 and all(shot.stat().st_size > 1000 for shot in console.shots)
