"""A live project's life, timed (issue 9): made live, changed on request, killed and repaired,
rolled back by hand.

    .venv/bin/python bench/live_project.py [--write]

Everything is the real thing on the embedded default (or DATABASE_URL): the stages run in this
process through ``pipeline.execute`` as the chain would run them (the scripted agent in a real
worker process group, real git, real copier, the project's own tests, the local deploy target),
the probe and the repair are the beat's and the repair task's functions called in turn, and the
rollback is the one the API and ``/rollback`` call. Each step is timed from the person's request
(or the release's death) to the release answering its URL.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FACTORY_HOME", tempfile.mkdtemp(prefix="bench-live-project-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.report import load_now, machine, write_section  # noqa: E402
from orchestrator import pipeline, releases  # noqa: E402
from orchestrator.deploy.local import http  # noqa: E402
from orchestrator.maintenance import project_teardown  # noqa: E402
from orchestrator.procs import process_alive  # noqa: E402
from orchestrator.stages import Next  # noqa: E402
from projects import runs, services  # noqa: E402
from projects.models import Deployment, Incident, PipelineRun  # noqa: E402

ORDER = list(runs.STAGE_ORDER)


def drive(run_id: int) -> PipelineRun:
    """The run's stages in order, as its chain would run them (looping back on failed tests)."""
    i = ORDER.index(runs.first_open_stage(PipelineRun.objects.get(id=run_id)))
    while i < len(ORDER):
        outcome = pipeline.execute(stage=ORDER[i], run_id=run_id, task_id="bench")
        if outcome is None:
            break
        i = ORDER.index("developer") if outcome is Next.LOOP else i + 1
    run = PipelineRun.objects.get(id=run_id)
    assert run.status == "succeeded", f"run {run.id} {run.status}: {run.error_message}"
    return run


def live(project_id: int) -> Deployment:
    return Deployment.objects.get(project_id=project_id, status="live")


def answers(deployment: Deployment, path: str, expect: str) -> None:
    status, body = http(deployment.url + path, timeout=5)
    assert status == 200 and expect in body, (path, status, body[:200])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    when = machine()
    call_command("migrate", verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username="bench-live")
    figures: list[tuple[str, float, str]] = []

    started = time.monotonic()
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    drive(run.id)
    first = live(project.id)
    answers(first, "greet?name=Ada", "Ada")
    figures.append(("a description → its release answering", time.monotonic() - started, f"release {first.id}"))
    try:
        started = time.monotonic()
        change = services.project_request_change(project_id=project.id, description="also roll dice", user=user)
        drive(change.id)
        second = live(project.id)
        answers(second, "roll?sides=6", "roll")
        answers(second, "greet?name=Ada", "Ada")
        figures.append(
            ("a change request (“also roll dice”) → the new release answering", time.monotonic() - started, "")
        )

        os.killpg(second.pid, signal.SIGKILL)
        while process_alive(second.pid):
            time.sleep(0.01)
        started = time.monotonic()
        assert releases.releases_probe()["opened"] == 1
        detected = time.monotonic() - started
        incident = Incident.objects.get(project=project, status__in=Incident.OPEN)
        while (countdown := releases.release_repair(incident_id=incident.id)) is not None:
            time.sleep(countdown)
        incident.refresh_from_db()
        assert incident.status == "resolved", incident.status
        answers(live(project.id), "roll?sides=6", "roll")
        figures.append(
            (
                "killed → found down by one probe → restarted and answering",
                time.monotonic() - started,
                f"the probe itself {detected:.2f} s; {incident.events.count()} steps recorded",
            )
        )

        started = time.monotonic()
        restored = releases.rollback_by_hand(project=project)
        answers(restored, "greet?name=Ada", "Ada")
        assert http(restored.url + "roll?sides=6", timeout=5)[0] == 404, "the earlier release has no /roll"
        figures.append(("a rollback by hand → the earlier release answering", time.monotonic() - started, ""))
    finally:
        project_teardown(project_id=project.id)

    lines = [
        f"Measured {when}; load average {load_now()} at the end. Produced by `bench/live_project.py`: "
        "the real stages in process (scripted agent, local deploy target), one project, one run of each.",
        "",
        "| step | seconds | note |",
        "|---|---|---|",
        *(f"| {what} | {seconds:.2f} | {note} |" for what, seconds, note in figures),
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("A live project's life, timed", body)


if __name__ == "__main__":
    main()
