"""The docker deploy target: a release is an image built from the project's own Dockerfile,
run as a container on the Docker engine, through the Docker SDK.

- The image is built from the release directory (the tested commit; `.git` left out) on top of
  `RELEASE_BASE_IMAGE`, an image that exists on the engine (no registry is asked: the build has
  no network and pulls nothing), passed as the Dockerfile's only build argument `BASE_IMAGE`.
  It is tagged `factory-release/<slug>:<deployment id>` and labelled like the container, and
  reused when the same release starts again (a restart, a rollback: seconds, no rebuild). A
  project without a Dockerfile (made before templates had one) gets the templates' default.
- The container carries the factory's labels (`factory.instance`, `factory.deployment`,
  `factory.project`), the target's CPU and memory limits, restart policy `unless-stopped`, and
  `network_mode=host`: it listens on its allocated port on loopback like a local release. Its
  environment (secrets included) goes through the API in memory: no env file, no build
  argument, nothing on disk.
- Containers outlive the factory's processes; they are found again by their labels. Only this
  installation's are ever touched (`factory.instance`).

SDK objects never leave this module; the engine's errors are sorted into TransientError (no
answer, 5xx) and `ReleaseError` (a build or a start the engine refused).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import structlog
from django.conf import settings

import docker
from config.errors import TransientError
from orchestrator.deploy.local import RELEASE_INSTANCE_MARKER, RELEASE_MARKER, ReleaseError, read_start_spec
from orchestrator.deploy.targets import ReleaseUsage, RunningRelease
from orchestrator.runtime.base import factory_instance
from orchestrator.runtime.docker import engine_client

log = structlog.get_logger(__name__)

INSTANCE_LABEL = "factory.instance"
DEPLOYMENT_LABEL = "factory.deployment"
PROJECT_LABEL = "factory.project"
# The Dockerfile every template carries; used for projects scaffolded before templates had one.
DEFAULT_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
WORKDIR /app
COPY . /app
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
CMD ["python3", "app.py"]
"""
STOP_GRACE_SECONDS = 5


@contextmanager
def _engine(what: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.BuildError as exc:
        tail = "".join(str(item.get("stream") or item.get("error") or "") for item in exc.build_log)[-1500:]
        raise ReleaseError(f"{what}: the image did not build: {exc.msg}\n{tail}") from exc
    except docker.errors.APIError as exc:
        status = exc.status_code
        message = f"{what}: the Docker engine refused ({status}): {exc.explanation or exc}"
        if status is None or status >= 500 or status == 429:
            raise TransientError(message, code="docker_error") from exc
        raise ReleaseError(message) from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError) as exc:
        raise TransientError(f"{what}: the Docker engine does not answer: {exc}", code="docker_unreachable") from exc


def image_tag(project_slug: str, deployment_id: int) -> str:
    return f"factory-release/{project_slug}:{deployment_id}"


def container_name(deployment_id: int) -> str:
    # One container per release on an engine: a second start of the same release replaces it.
    return f"factory-release-{factory_instance()}-{deployment_id}"


def _labels(project_slug: str, deployment_id: int) -> dict[str, str]:
    return {INSTANCE_LABEL: factory_instance(), DEPLOYMENT_LABEL: str(deployment_id), PROJECT_LABEL: project_slug}


def _argv(release_dir: Path) -> list[str]:
    """factory.json's start, with `python` meaning the image's python3."""
    start = read_start_spec(release_dir).start
    return ["python3" if start[0] == "python" else start[0], *start[1:]]


class DockerTarget:
    name = "docker"

    # --- images ------------------------------------------------------------------------------

    def image(self, *, deployment_id: int, project_slug: str, release_dir: Path) -> str:
        """The release's image id: the one built for it before, or a new build."""
        tag = image_tag(project_slug, deployment_id)
        client = engine_client()
        with _engine(f"Looking for image {tag}"):
            try:
                existing = client.images.get(tag)
            except docker.errors.ImageNotFound:
                existing = None
        wanted = _labels(project_slug, deployment_id)
        if existing is not None and all((existing.labels or {}).get(k) == v for k, v in wanted.items()):
            return existing.id
        return self.build(deployment_id=deployment_id, project_slug=project_slug, release_dir=release_dir)

    def build(self, *, deployment_id: int, project_slug: str, release_dir: Path) -> str:
        base = settings.RELEASE_BASE_IMAGE
        client = engine_client()
        with _engine(f"Looking for the base image {base}"):
            try:
                client.images.get(base)
            except docker.errors.ImageNotFound:
                raise ReleaseError(
                    f"The release base image {base} is not on this Docker engine (set RELEASE_BASE_IMAGE, or "
                    "build the test image with scripts/worker-image)."
                ) from None
        own = (release_dir / "Dockerfile").is_file()
        dockerfile = ("Dockerfile", None) if own else (".factory.Dockerfile", DEFAULT_DOCKERFILE)
        context = docker.utils.build.tar(
            str(release_dir),
            exclude=[".git", "**/__pycache__", "*.log"],
            dockerfile=dockerfile if not own else None,
            fileobj=io.BytesIO(),
        )
        tag = image_tag(project_slug, deployment_id)
        try:
            with _engine(f"Building {tag}"):
                image, _ = client.images.build(
                    fileobj=context,
                    custom_context=True,
                    dockerfile=dockerfile[0],
                    tag=tag,
                    buildargs={"BASE_IMAGE": base},
                    labels=_labels(project_slug, deployment_id),
                    pull=False,
                    network_mode="none",
                    rm=True,
                    forcerm=True,
                    use_config_proxy=False,
                )
        finally:
            context.close()
        log.info("release_image_built", deployment_id=deployment_id, tag=tag, image=image.short_id, own_dockerfile=own)
        return image.id

    def prune(self, *, project_slug: str, keep: set[int]) -> list[str]:
        """Remove this project's release images except those of ``keep`` (an image a container
        still uses stays)."""
        filters = {"label": [f"{INSTANCE_LABEL}={factory_instance()}", f"{PROJECT_LABEL}={project_slug}"]}
        removed = []
        with _engine(f"Listing the images of {project_slug}"):
            images = engine_client().images.list(filters=filters)
        for image in images:
            deployment = (image.labels or {}).get(DEPLOYMENT_LABEL, "")
            if not deployment.isdigit() or int(deployment) in keep:
                continue
            try:
                with _engine(f"Removing image {image.short_id}"):
                    engine_client().images.remove(image.id, force=False, noprune=False)
            except ReleaseError as exc:  # 409: a container still uses it
                log.info("release_image_kept", image=image.short_id, why=str(exc)[:200])
                continue
            removed.append(image_tag(project_slug, int(deployment)))
        if removed:
            log.info("release_images_pruned", project=project_slug, removed=removed)
        return removed

    # --- containers --------------------------------------------------------------------------

    def start(
        self, *, deployment_id: int, project_slug: str, release_dir: Path, port: int, host: str, env: dict[str, str]
    ) -> int:
        image = self.image(deployment_id=deployment_id, project_slug=project_slug, release_dir=release_dir)
        self.stop(deployment_id=deployment_id, pid=None)  # a container left by a killed attempt
        kwargs: dict[str, Any] = dict(
            command=_argv(release_dir),
            name=container_name(deployment_id),
            labels=_labels(project_slug, deployment_id),
            environment={
                "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1",
                **env,
                "PORT": str(port),
                "HOST": host,
                "RELEASE": str(deployment_id),
                RELEASE_MARKER: str(deployment_id),
                RELEASE_INSTANCE_MARKER: factory_instance(),
            },
            network_mode="host",
            restart_policy={"Name": "unless-stopped"},
            nano_cpus=int(settings.RELEASE_CPU_LIMIT * 1_000_000_000),
            mem_limit=settings.RELEASE_MEMORY_LIMIT_MB * 1024 * 1024,
            security_opt=["no-new-privileges"],
            cap_drop=["ALL"],
            user="65534:65534",
            detach=True,
        )
        client = engine_client()
        # create + start, not run: run() would ask a registry for a missing image.
        with _engine(f"Creating the container of release {deployment_id}"):
            container = client.containers.create(image, **kwargs)
        try:
            with _engine(f"Starting the container of release {deployment_id}"):
                container.start()
                container.reload()
        except (ReleaseError, TransientError):
            self.stop(deployment_id=deployment_id, pid=None)
            raise
        pid = int((container.attrs.get("State") or {}).get("Pid") or 0)
        log.info("release_container_started", deployment_id=deployment_id, container=container.short_id)
        return pid or 1  # the row records a pid; the container is found by its labels

    def _containers(self, deployment_id: int | None = None, *, running_only: bool = False) -> list[Any]:
        labels = [f"{INSTANCE_LABEL}={factory_instance()}", DEPLOYMENT_LABEL]
        if deployment_id is not None:
            labels[1] = f"{DEPLOYMENT_LABEL}={deployment_id}"
        filters: dict[str, Any] = {"label": labels}
        if running_only:
            filters["status"] = "running"
        with _engine("Listing releases"):
            return engine_client().containers.list(all=not running_only, filters=filters)

    def stop(self, *, deployment_id: int, pid: int | None) -> None:
        """Stop (SIGTERM, SIGKILL after the grace) and remove every container of this release."""
        for container in self._containers(deployment_id):
            try:
                with _engine(f"Stopping release {deployment_id}"):
                    if container.status in ("running", "restarting", "paused"):
                        container.stop(timeout=STOP_GRACE_SECONDS)
                    container.remove(force=True)
            except ReleaseError as exc:
                text = str(exc)
                if "404" in text or "already in progress" in text:
                    continue  # gone, or being removed: our goal either way
                raise

    def alive(self, *, deployment_id: int, pid: int | None) -> bool:
        return bool(self._containers(deployment_id, running_only=True))

    def list_releases(self) -> list[RunningRelease]:
        found = []
        for container in self._containers():
            value = (container.labels or {}).get(DEPLOYMENT_LABEL, "")
            if value.isdigit():
                found.append(
                    RunningRelease(deployment_id=int(value), handle=container.id, running=container.status == "running")
                )
        return found

    def usage(self, *, deployment_id: int, pid: int | None) -> ReleaseUsage | None:
        """From the engine's statistics: CPU as a percentage of one core over the engine's
        sample, memory in use without the reclaimable file cache (as `docker stats` counts)."""
        containers = self._containers(deployment_id, running_only=True)
        if not containers:
            return None
        with _engine(f"Reading statistics of release {deployment_id}"):
            raw = containers[0].stats(stream=False)
        cpu, pre = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
        cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get(
            "total_usage", 0
        )
        system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        cpus = cpu.get("online_cpus") or 1
        percent = round(cpu_delta / system_delta * cpus * 100, 1) if system_delta > 0 and cpu_delta >= 0 else None
        memory = raw.get("memory_stats") or {}
        usage = memory.get("usage")
        if usage is not None:
            details = memory.get("stats") or {}
            usage = max(usage - details.get("total_inactive_file", details.get("inactive_file", 0)), 0)
        return ReleaseUsage(cpu_percent=percent, memory_bytes=usage)

    def log_tail(self, *, deployment_id: int, release_dir: Path, limit: int = 1500) -> str:
        containers = self._containers(deployment_id)
        if not containers:
            return ""
        try:
            with _engine(f"Reading the output of release {deployment_id}"):
                return containers[0].logs(tail=200).decode("utf-8", "replace")[-limit:]
        except (ReleaseError, TransientError):
            return ""
