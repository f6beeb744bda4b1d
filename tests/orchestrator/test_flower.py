"""`manage.py flower`: Flower behind basic auth, and never open in production."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests
from django.core.management.base import CommandError

from config.celery import app
from orchestrator.management.commands.flower import flower_argv
from projects import services
from tests.caddy_server import free_port
from tests.conftest import ROOT, child_env, wait_for_run

# Every stage's task (how a run's first message is sent is the engine's business).
PIPELINE_TASKS = {
    "pipeline.architect",
    "pipeline.preparer",
    "pipeline.developer",
    "pipeline.tester",
    "pipeline.deployer",
    "pipeline.notify",
}


def test_production_without_credentials_is_refused():
    with pytest.raises(CommandError, match="without authentication"):
        flower_argv(auth="", address="127.0.0.1", port=5555, production=True)
    with pytest.raises(CommandError, match="user:password"):
        flower_argv(auth="no-colon", address="127.0.0.1", port=5555, production=True)


def test_the_credentials_never_go_on_the_command_line():
    argv = flower_argv(auth="operator:s3cret-pass", address="127.0.0.1", port=5555, production=True)
    assert not any("s3cret" in part for part in argv)


def test_a_production_flower_without_credentials_does_not_start(tmp_path):
    key = "M0t5bFn0Yh2cJx2b8Vt0nQyq3oUa1n8yZkGq8r2c9aE="  # any Fernet key: production requires one
    env = child_env(PRODUCTION="true", DJANGO_SECRET_KEY="x" * 50, SECRETS_ENCRYPTION_KEY=key, FLOWER_BASIC_AUTH="")
    done = subprocess.run(
        [sys.executable, "manage.py", "flower"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "without authentication" in done.stderr


@pytest.mark.django_db
def test_flower_answers_only_with_its_credentials(tmp_path):
    port = free_port()
    env = child_env(FLOWER_BASIC_AUTH="operator:s3cret-pass", FLOWER_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "flower"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/api/workers"
        deadline = time.monotonic() + 30
        while True:
            try:
                anonymous = requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "flower did not start"
                time.sleep(0.3)
        assert anonymous.status_code == 401
        assert requests.get(url, auth=("operator", "wrong"), timeout=5).status_code == 401
        assert requests.get(url, auth=("operator", "s3cret-pass"), timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)


def _wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            assert proc.poll() is None, "flower exited"
            assert time.monotonic() < deadline, "flower did not start"
            time.sleep(0.3)


def _names(base: str, auth) -> set[str]:
    tasks = requests.get(f"{base}/api/tasks", auth=auth, timeout=10).json()
    return {task.get("name") for task in tasks.values()}


@pytest.mark.e2e
def test_flower_shows_the_pipelines_tasks_with_their_names_and_states(celery_procs, user):
    """A real worker runs a whole pipeline while Flower (started as the README says) watches
    the broker's events; its API, behind basic auth, lists every stage's task as succeeded."""
    port = free_port()
    celery_procs.worker(task_events=True)
    flower_log = celery_procs.home / "flower.log"
    with open(flower_log, "wb") as out:
        flower = subprocess.Popen(
            [sys.executable, "manage.py", "flower"],
            cwd=ROOT,
            env=child_env(FLOWER_BASIC_AUTH="operator:s3cret-pass", FLOWER_PORT=str(port)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base, auth = f"http://127.0.0.1:{port}", ("operator", "s3cret-pass")
    try:
        _wait_for_http(f"{base}/api/tasks", flower)
        # Flower subscribes to the events a moment after it answers HTTP: a harmless sweep, sent
        # until Flower has seen one, shows it is listening before the run starts.
        deadline = time.monotonic() + 30
        while not _names(base, auth) & {"workers.pause_idle"}:
            assert time.monotonic() < deadline, flower_log.read_text(errors="replace")[-2000:]
            app.send_task("workers.pause_idle")
            time.sleep(1)
        project, run = services.project_create(owner=user, description="a web service that greets people by name")
        run = wait_for_run(run.id, procs=celery_procs)
        assert run.status == "succeeded", run.error_message

        assert requests.get(f"{base}/api/tasks", timeout=5).status_code == 401
        assert requests.get(f"{base}/api/tasks", auth=("operator", "wrong"), timeout=5).status_code == 401
        deadline, seen = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            answer = requests.get(f"{base}/api/tasks", auth=auth, timeout=10)
            assert answer.status_code == 200
            seen = {task["name"]: task["state"] for task in answer.json().values() if task.get("name")}
            if set(seen) >= PIPELINE_TASKS and all(seen[name] == "SUCCESS" for name in PIPELINE_TASKS):
                break
            time.sleep(0.5)
        missing = {name: seen.get(name) for name in PIPELINE_TASKS if seen.get(name) != "SUCCESS"}
        assert not missing, f"Flower's view of the pipeline: {seen}\n{flower_log.read_text(errors='replace')[-2000:]}"
        # One task by its id, as an operator clicks through: its arguments carry the run's id.
        tasks = requests.get(f"{base}/api/tasks", params={"taskname": "pipeline.deployer"}, auth=auth, timeout=10)
        (task_id, task), *_ = tasks.json().items()
        detail = requests.get(f"{base}/api/task/info/{task_id}", auth=auth, timeout=10).json()
        assert detail["name"] == "pipeline.deployer" and detail["state"] == "SUCCESS"
        assert str(run.id) in str(detail.get("kwargs"))
    finally:
        flower.terminate()
        flower.wait(15)
