"""The docker deploy target on the real engine: a release is an image built from the template's
own Dockerfile on a local base image (no registry), run as a labelled, limited container on the
host network with its environment (a secret included) given through the API and never written to
a file; stopped, listed, adopted after a restart, and its old images pruned. Skipped without an
engine, except in CI (the `engine` fixture)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import copier
import pytest

from orchestrator.deploy import docker as docker_target
from orchestrator.deploy import local, targets
from orchestrator.deploy.local import http
from orchestrator.maintenance import releases_reconcile
from projects import deployments
from projects.models import Deployment, Incident, PipelineRun
from tests.orchestrator.test_stages_idempotent import drive

ROOT = Path(__file__).resolve().parents[2]
SECRET = "canary-secret-value-7f3a91c2"


@pytest.fixture
def docker_deploys(engine, worker_image, settings):
    settings.DEPLOY_TARGET = "docker"
    settings.RELEASE_BASE_IMAGE = worker_image
    yield engine
    # Whatever a test left behind on the engine (this installation's only).
    instance = f"{docker_target.INSTANCE_LABEL}={docker_target.factory_instance()}"
    for container in engine.containers.list(all=True, filters={"label": instance}):
        container.remove(force=True)
    for image in engine.images.list(filters={"label": instance}):
        engine.images.remove(image.id, force=True)


@pytest.fixture
def release_dir(tmp_path) -> Path:
    """A web service rendered from templates/web_service, as the Preparer scaffolds it."""
    target = tmp_path / "release"
    copier.run_copy(
        str(ROOT / "templates" / "web_service"),
        str(target),
        defaults=True,
        unsafe=False,
        quiet=True,
        data={"project_name": "Greeter", "project_slug": "greeter", "summary": "Greets people."},
    )
    assert (target / "Dockerfile").is_file()
    return target


def _row(new_run) -> Deployment:
    run = new_run()
    return deployments.deployment_allocate(project_id=run.project_id, run_id=run.id, commit_sha="0" * 40)


def _start(target, row: Deployment, release_dir: Path, env: dict | None = None) -> int:
    pid = target.start(
        deployment_id=row.id,
        project_slug="greeter",
        release_dir=release_dir,
        port=row.port,
        host="127.0.0.1",
        env=env or {},
    )
    check = local.wait_healthy(
        pid=pid,
        url=f"http://127.0.0.1:{row.port}/",
        path="/health",
        release=str(row.id),
        timeout=30,
        alive=lambda: target.alive(deployment_id=row.id, pid=pid),
    )
    assert check.ok, check.detail + target.log_tail(deployment_id=row.id, release_dir=release_dir)
    return pid


def _grep(root: Path, needle: str) -> list[str]:
    found = subprocess.run(["grep", "-rl", needle, str(root)], capture_output=True, text=True)
    return found.stdout.split()


def test_a_release_is_a_labelled_limited_container_built_from_the_templates_dockerfile(
    docker_deploys, new_run, release_dir, settings, factory_home
):
    settings.RELEASE_CPU_LIMIT = 0.5
    settings.RELEASE_MEMORY_LIMIT_MB = 128
    target = targets.get_target()
    row = _row(new_run)
    pid = _start(target, row, release_dir, env={"GREETER_API_KEY": SECRET})

    assert target.name == "docker" and target.alive(deployment_id=row.id, pid=pid)
    status, body = http(f"http://127.0.0.1:{row.port}/health")
    assert status == 200 and f'"release": "{row.id}"' in body
    container = docker_deploys.containers.get(docker_target.container_name(row.id))
    attrs = container.attrs
    assert {
        "factory.instance": docker_target.factory_instance(),
        "factory.deployment": str(row.id),
        "factory.project": "greeter",
    }.items() <= container.labels.items()
    host = attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 128 * 1024 * 1024
    assert host["RestartPolicy"]["Name"] == "unless-stopped" and host["NetworkMode"] == "host"
    # The secret reaches the release through the API, in memory: its environment has it...
    assert f"GREETER_API_KEY={SECRET}" in attrs["Config"]["Env"]
    # ... and nothing else does: no env file, no build argument, no file on disk, no image layer.
    assert not host.get("Binds") and not attrs.get("Mounts")
    image = docker_deploys.images.get(docker_target.image_tag("greeter", row.id))
    assert image.id == attrs["Image"]
    assert SECRET not in str(image.attrs) and all(SECRET not in str(layer) for layer in image.history())
    assert _grep(factory_home, SECRET) == [] and _grep(release_dir, SECRET) == []
    usage = target.usage(deployment_id=row.id, pid=pid)
    assert usage.memory_bytes and 0 < usage.memory_bytes < 128 * 1024 * 1024
    assert usage.cpu_percent is not None

    releases = target.list_releases()
    assert [(r.deployment_id, r.handle, r.running) for r in releases] == [(row.id, container.id, True)]
    target.stop(deployment_id=row.id, pid=pid)
    assert not target.alive(deployment_id=row.id, pid=pid) and target.list_releases() == []
    assert docker_deploys.images.get(image.id)  # kept: a restart or a rollback needs no rebuild


def test_a_restart_policy_brings_a_crashed_release_back_and_a_second_start_replaces_the_container(
    docker_deploys, new_run, release_dir
):
    target = targets.get_target("docker")
    row = _row(new_run)
    _start(target, row, release_dir)
    first = docker_deploys.containers.get(docker_target.container_name(row.id))
    first.kill()  # the engine restarts it (unless-stopped)... once it notices; a start replaces it
    pid = _start(target, row, release_dir)
    containers = docker_deploys.containers.list(all=True, filters={"label": f"factory.deployment={row.id}"})
    assert len(containers) == 1 and containers[0].id != first.id
    target.stop(deployment_id=row.id, pid=pid)


def test_a_whole_run_deploys_its_release_as_a_container_and_teardown_removes_it(docker_deploys, new_run):
    run = new_run()
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    live = Deployment.objects.get(run=run, status="live")
    assert live.target == "docker"
    assert http(live.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1
    slug = run.project.slug
    assert docker_deploys.images.get(docker_target.image_tag(slug, live.id))
    from orchestrator.maintenance import project_teardown

    project_teardown(project_id=run.project_id)
    assert targets.get_target("docker").list_releases() == []
    assert Deployment.objects.get(id=live.id).status == "stopped"


def test_a_node_starting_stops_unaccounted_containers_and_finds_a_removed_one_down(
    docker_deploys, new_run, release_dir
):
    target = targets.get_target("docker")
    stray = _row(new_run)
    _start(target, stray, release_dir)
    deployments.deployment_fail(deployment_id=stray.id, error="left behind by a killed Deployer")
    live = _row(new_run)
    live_pid = _start(target, live, release_dir)
    deployments.deployment_started(deployment_id=live.id, pid=live_pid, release_dir=str(release_dir))
    deployments.deployment_go_live(deployment_id=live.id, url=f"http://127.0.0.1:{live.port}/")
    dead = _row(new_run)
    dead_pid = _start(target, dead, release_dir)
    deployments.deployment_started(deployment_id=dead.id, pid=dead_pid, release_dir=str(release_dir))
    deployments.deployment_go_live(deployment_id=dead.id, url=f"http://127.0.0.1:{dead.port}/")
    docker_deploys.containers.get(docker_target.container_name(dead.id)).remove(force=True)

    report = releases_reconcile(adopt=True)

    assert report.orphans == [stray.id] and report.down == [dead.id]
    assert {r.deployment_id for r in target.list_releases()} == {live.id}
    assert Incident.objects.get(deployment_id=dead.id).status == "detected"
    assert http(f"http://127.0.0.1:{live.port}/health")[0] == 200


def test_old_images_beyond_the_kept_releases_are_pruned(docker_deploys, new_run, release_dir):
    target = targets.get_target("docker")
    run = new_run()
    rows = []
    for _ in range(3):
        other = PipelineRun.objects.create(project_id=run.project_id, kind="redeploy", status="succeeded")
        rows.append(deployments.deployment_allocate(project_id=run.project_id, run_id=other.id, commit_sha="0" * 40))
        target.build(deployment_id=rows[-1].id, project_slug="greeter", release_dir=release_dir)
        deployments.deployment_fail(deployment_id=rows[-1].id, error="")

    removed = target.prune(project_slug="greeter", keep={rows[-1].id})

    assert sorted(removed) == sorted(docker_target.image_tag("greeter", r.id) for r in rows[:2])
    tags = {t for image in docker_deploys.images.list(name="factory-release/greeter") for t in image.tags}
    assert docker_target.image_tag("greeter", rows[-1].id) in tags
    assert not tags & set(removed)
