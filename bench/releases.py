"""How fast a dead release is noticed and repaired (issue 9 §3).

    .venv/bin/python bench/releases.py [--trials 5] [--interval 2] [--target local|docker] [--write]

A real release (a small stdlib web service started by the local deploy target) is made live,
then SIGKILLed; a beat stand-in calls the release probe every --interval seconds (as
`maintenance.probe_releases` does on the RELEASE_PROBE_INTERVAL_SECONDS schedule) and the
repair step runs as soon as an incident is opened (as the `releases.repair` task would). It
measures, per trial, the time from the kill to the incident (detection) and from the incident to
its end (recovery: the release restarted in place and healthy again). Goal: detected within one
probe interval plus the probe timeout; recovered within 10 s of detection on the local target
and 20 s on Docker. On Docker the release's container is killed through the engine (as an
operator's `docker kill` or an out-of-memory kill would: the restart policy does not bring it back).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FACTORY_HOME", tempfile.mkdtemp(prefix="bench-releases-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402

from bench.report import load_now, machine, write_section  # noqa: E402
from orchestrator import releases  # noqa: E402
from orchestrator.deploy import local  # noqa: E402
from orchestrator.deploy.targets import get_target, target_for  # noqa: E402
from projects import deployments  # noqa: E402
from projects.models import Incident, PipelineRun, Project  # noqa: E402

APP = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok", "release": os.environ["RELEASE"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler).serve_forever()
"""

DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
WORKDIR /app
COPY . /app
CMD ["python3", "app.py"]
"""


def live_release() -> tuple[Project, int]:
    user, _ = get_user_model().objects.get_or_create(username="bench")
    slug = f"bench-{int(time.time() * 1000) % 10**9}"
    spec = {"name": "Bench", "slug": slug, "kind": "web_service", "features": [{"name": "greet"}], "env": []}
    project = Project.objects.create(owner=user, description="bench", slug=slug, kind="web_service", spec=spec)
    run = PipelineRun.objects.create(project=project, kind="create", status="succeeded")
    deployment = deployments.deployment_allocate(project_id=project.id, run_id=run.id, commit_sha="b" * 40)
    release_dir = Path(settings.FACTORY_HOME) / "releases" / slug / str(deployment.id)
    release_dir.mkdir(parents=True)
    (release_dir / "app.py").write_text(APP)
    (release_dir / "factory.json").write_text('{"start": ["python", "app.py"], "health": "/health"}')
    (release_dir / "Dockerfile").write_text(DOCKERFILE)
    pid = get_target().start(
        deployment_id=deployment.id,
        project_slug=slug,
        release_dir=release_dir,
        port=deployment.port,
        host="127.0.0.1",
        env={},
    )
    deployments.deployment_started(deployment_id=deployment.id, pid=pid, release_dir=str(release_dir))
    url = f"http://127.0.0.1:{deployment.port}/"
    assert local.wait_healthy(pid=pid, url=url, path="/health", release=str(deployment.id), timeout=20).ok
    deployments.deployment_go_live(deployment_id=deployment.id, url=url)
    return project, deployment.id


def trial(project: Project, interval: float) -> tuple[float, float]:
    """Kill the live release; the probe runs every `interval` s from a random phase."""
    live = project.deployments.get(status="live")
    stop = threading.Event()
    phase = (time.monotonic() * 7.3) % interval  # beat's ticks are not aligned with the failure

    def beat() -> None:
        django.db.connections.close_all()
        time.sleep(phase)
        while not stop.is_set():
            counts = releases.releases_probe()
            if counts["opened"]:
                incident = Incident.objects.filter(project=project).order_by("-id").first()
                while (countdown := releases.release_repair(incident_id=incident.id)) is not None:
                    time.sleep(countdown)
            stop.wait(interval)
        django.db.connections.close_all()

    killed_at = datetime.now(UTC)
    if live.target == "docker":
        import docker

        client = docker.from_env()
        for container in client.containers.list(filters={"label": f"factory.deployment={live.id}"}):
            container.kill()
        client.close()
    else:
        os.killpg(live.pid, signal.SIGKILL)
    while target_for(live).alive(deployment_id=live.id, pid=live.pid):
        time.sleep(0.01)
    thread = threading.Thread(target=beat)
    thread.start()
    deadline = time.monotonic() + 120
    incident = None
    while time.monotonic() < deadline:
        incident = Incident.objects.filter(project=project, detected_at__gte=killed_at).first()
        if incident is not None and incident.status in ("resolved", "failed"):
            break
        time.sleep(0.05)
    stop.set()
    thread.join()
    assert incident is not None and incident.status == "resolved", incident
    return (
        (incident.detected_at - killed_at).total_seconds(),
        (incident.ended_at - incident.detected_at).total_seconds(),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--target", choices=["local", "docker"], default="local")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    settings.DEPLOY_TARGET = args.target
    started = machine()
    call_command("migrate", verbosity=0, interactive=False)
    project, _ = live_release()
    results = [trial(project, args.interval) for _ in range(args.trials)]
    for deployment in project.deployments.all():
        target_for(deployment).stop(deployment_id=deployment.id, pid=deployment.pid)
    detect = [r[0] for r in results]
    recover = [r[1] for r in results]
    bound = args.interval + settings.RELEASE_PROBE_TIMEOUT
    recover_goal = 10 if args.target == "local" else 20
    rows = [
        "| what | median | max | goal | met |",
        "|---|---|---|---|---|",
        f"| death → incident (detection) | {statistics.median(detect):.2f} s | {max(detect):.2f} s "
        f"| ≤ probe interval + timeout = {bound:.1f} s | {'yes' if max(detect) <= bound else 'no'} |",
        f"| incident → healthy again (recovery, {args.target} target) | {statistics.median(recover):.2f} s "
        f"| {max(recover):.2f} s | ≤ {recover_goal} s | {'yes' if max(recover) <= recover_goal else 'no'} |",
    ]
    body = "\n".join(
        [
            f"Measured {started}; load average {load_now()} at the end.",
            f"Produced by `bench/releases.py --trials {args.trials} --interval {args.interval} --target "
            f"{args.target}`: a live "
            "release SIGKILLed, the probe every interval from a random phase, the repair run at once "
            "(restart in place). Database: "
            + ("PostgreSQL" if "postgres" in settings.DATABASES["default"]["ENGINE"] else "SQLite")
            + ".",
            "",
            *rows,
        ]
    )
    print(body)
    if args.write:
        write_section(f"Releases: a dead release detected and repaired ({args.target} target)", body)


if __name__ == "__main__":
    main()
