"""The Docker runtime: a worker is a container on a Docker engine, driven through the Docker SDK.

One container per WorkerSpec, running ``sleep infinity`` under the engine's init (which reaps
whatever the worker's commands leave behind); commands run in it with ``exec``. The container:

- runs as this process's uid:gid, so what it writes into the workspace is owned like the host's
  own files (git on the host then works on them without "dubious ownership" refusals);
- sees the workspace bind-mounted read-write at the same path as on the host, so the ``cwd``
  paths callers pass are valid inside it unchanged;
- sees the factory's source tree read-only at ``/opt/factory`` (its importable code, for
  ``python3 -m agents.scripted.agent``), with the factory's ``.env`` and its home directory (when
  it lies inside the tree, as the default ``var/`` does) masked, so no secret or database of the
  factory is readable there;
- carries ``factory.managed=true``, the session marker and the installation marker as labels
  (and the markers in its environment), so the orphan sweep finds it whatever the database says,
  and never touches another installation's workers on the same engine;
- is removed by the engine as soon as it stops for any reason (``auto_remove``): a stopped
  worker is never resumed, so nothing of it would be worth keeping.

Exec timeouts are enforced inside the container: the command runs under coreutils'
``timeout -s KILL``, which puts it in its own process group and kills that whole group at the
deadline, so the command and its children really stop (the engine never kills an exec when its
client goes away). The host side stops reading the exec's output once the command itself has
exited, even if something it started in the background still holds the stream open, and gives
up a few seconds past the deadline in any case (a worker paused under a running command).

SDK objects never leave this module; engine errors are sorted into WorkerGone (no such
container), TransientError (engine unreachable, 5xx) and PermanentError (any other refusal).
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import structlog
from django.conf import settings
from docker.types import Mount

import docker
from config.errors import PermanentError, TransientError
from orchestrator.runtime.base import (
    INSTANCE_MARKER,
    SESSION_MARKER,
    ExecResult,
    WorkerGone,
    WorkerInfo,
    WorkerSpec,
    WorkerStats,
    factory_instance,
)

log = structlog.get_logger(__name__)

MANAGED_LABEL = "factory.managed"
FACTORY_MOUNT = "/opt/factory"
# How long past an exec's timeout the host keeps reading its stream before giving up on it.
EXEC_GRACE_SECONDS = 5.0
# A quiet stream makes us ask whether the command has exited; once it has, output still in
# flight is read for this long.
_QUIET_SECONDS = 0.25
_QUIET_MAX_SECONDS = 2.0
_DRAIN_SECONDS = 0.1
_LIVE = ("running", "paused")
# What list_workers reports: every state but exited/dead (those are removed by the engine).
_LISTED = ("created", "restarting", "running", "paused")

_client_lock = threading.Lock()
_client: tuple[tuple[int, str | None], docker.DockerClient] | None = None


def engine_client() -> docker.DockerClient:
    """One client per process and DOCKER_HOST, built on first use: never at import, and never
    shared across a fork (a Celery prefork child builds its own). The deploy target's containers
    use it too (orchestrator/deploy/docker.py)."""
    global _client
    key = (os.getpid(), os.environ.get("DOCKER_HOST"))
    with _client_lock:
        if _client is None or _client[0] != key:
            try:
                _client = (key, docker.from_env())
            except docker.errors.DockerException as exc:
                raise TransientError(f"The Docker engine does not answer: {exc}", code="docker_unreachable") from exc
        return _client[1]


@contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """Sort the engine's errors once: gone, transient, or permanent."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise WorkerGone(f"{what}: the container is gone.") from exc
    except docker.errors.APIError as exc:
        status = exc.status_code
        explanation = str(exc.explanation or exc)
        if status == 409 and "is not running" in explanation:
            raise WorkerGone(f"{what}: the container has stopped.") from exc
        message = f"{what}: the Docker engine refused ({status}): {explanation}"
        if status is None or status >= 500 or status == 429:
            raise TransientError(message, code="docker_error") from exc
        raise PermanentError(message, code="docker_refused") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError) as exc:
        raise TransientError(f"{what}: the Docker engine does not answer: {exc}", code="docker_unreachable") from exc


class DockerRuntime:
    """Workers as containers. CPU and memory limits are enforced by the engine."""

    name = "docker"
    python = "python3"
    factory_path = FACTORY_MOUNT

    # --- life cycle ---------------------------------------------------------------------------

    def create(self, spec: WorkerSpec) -> str:
        workspace = Path(spec.workspace).absolute()
        # Made here, not by the engine, so it belongs to us rather than to the engine's user.
        workspace.mkdir(parents=True, exist_ok=True)
        marker, instance = str(spec.session_id), factory_instance()
        image = settings.WORKER_IMAGE
        kwargs: dict[str, Any] = dict(
            command=["sleep", "infinity"],
            # Readable in `docker ps`; unique, so an old session id from another database clashes with nothing.
            name=f"factory-worker-{marker}-{secrets.token_hex(3)}",
            init=True,
            auto_remove=True,
            labels={**spec.labels, MANAGED_LABEL: "true", SESSION_MARKER: marker, INSTANCE_MARKER: instance},
            environment={**spec.env, SESSION_MARKER: marker, INSTANCE_MARKER: instance},
            user=f"{os.getuid()}:{os.getgid()}",
            working_dir=str(workspace),
            network_mode=settings.WORKER_NETWORK_MODE,
            mounts=[
                Mount(target=str(workspace), source=str(workspace.resolve()), type="bind", read_only=False),
                *(
                    Mount(target=str(d), source=str(Path(d).resolve()), type="bind", read_only=False)
                    for d in spec.shared_dirs
                ),
                *_factory_mounts(),
            ],
            security_opt=["no-new-privileges"],
        )
        if spec.cpu_limit:
            kwargs["nano_cpus"] = int(spec.cpu_limit * 1_000_000_000)
        if spec.memory_limit_mb:
            kwargs["mem_limit"] = spec.memory_limit_mb * 1024 * 1024
        client = engine_client()
        try:
            # create + start, not run: run() would try to pull a missing image from a registry.
            with _engine_errors(f"Creating a worker from {image}"):
                container = client.containers.create(image, **kwargs)
        except WorkerGone as exc:  # NotFound at create time: the image is missing
            raise PermanentError(
                f"The worker image {image} is not on this Docker engine (set WORKER_IMAGE, or build the test "
                f"image with scripts/worker-image).",
                code="worker_image_missing",
            ) from exc
        try:
            with _engine_errors(f"Starting worker {container.short_id}"):
                container.start()
        except (WorkerGone, TransientError, PermanentError):
            self.terminate(container.id)  # no half-made worker left behind
            raise
        log.info("docker_worker_created", session_id=spec.session_id, container=container.short_id, image=image)
        return container.id

    def pause(self, handle: str) -> None:
        container = self._live(handle, "Pausing")
        if container.status == "paused":
            return
        with _engine_errors(f"Pausing worker {handle[:12]}"):
            container.pause()

    def unpause(self, handle: str) -> None:
        container = self._live(handle, "Resuming")
        if container.status != "paused":
            return
        with _engine_errors(f"Resuming worker {handle[:12]}"):
            container.unpause()

    def terminate(self, handle: str) -> None:
        """Remove the container and everything in it (paused or not); a gone one is no error."""
        try:
            with _engine_errors(f"Terminating worker {handle[:12]}"):
                engine_client().api.remove_container(handle, force=True)
        except WorkerGone:
            return
        except PermanentError as exc:
            # 409 "removal already in progress": someone else is removing it, which is our goal.
            if "already in progress" not in exc.message:
                raise

    def is_alive(self, handle: str) -> bool:
        try:
            return self._get(handle, "Inspecting").status in _LIVE
        except WorkerGone:
            return False

    def stats(self, handle: str) -> WorkerStats:
        """CPU time used so far and memory in use (without the reclaimable file cache, as
        ``docker stats`` counts it), from the engine's one-shot statistics."""
        container = self._live(handle, "Reading statistics of")
        with _engine_errors(f"Reading statistics of worker {handle[:12]}"):
            try:
                raw = container.stats(stream=False, one_shot=True)
            except docker.errors.InvalidVersion:  # engines older than API 1.41
                raw = container.stats(stream=False)
        cpu_ns = (raw.get("cpu_stats") or {}).get("cpu_usage", {}).get("total_usage")
        memory = raw.get("memory_stats") or {}
        usage = memory.get("usage")
        if usage is not None:
            details = memory.get("stats") or {}
            cache = details.get("total_inactive_file", details.get("inactive_file", 0))
            usage = max(usage - cache, 0)
        return WorkerStats(cpu_seconds=cpu_ns / 1e9 if cpu_ns is not None else None, memory_bytes=usage)

    def list_workers(self) -> list[WorkerInfo]:
        """This installation's containers on this engine that have not stopped (``running`` is
        False for paused ones, and for ones created but never started)."""
        labels = [f"{MANAGED_LABEL}=true", f"{INSTANCE_MARKER}={factory_instance()}"]
        with _engine_errors("Listing workers"):
            containers = engine_client().containers.list(all=True, filters={"label": labels, "status": list(_LISTED)})
        found = []
        for container in containers:
            labels = dict(container.labels or {})
            marker = labels.get(SESSION_MARKER, "")
            found.append(
                WorkerInfo(
                    handle=container.id,
                    session_id=int(marker) if marker.isdigit() else None,
                    labels=labels,
                    running=container.status == "running",
                )
            )
        return found

    # --- exec ---------------------------------------------------------------------------------

    def exec(self, handle: str, argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> ExecResult:
        container = self._live(handle, "Running a command in")
        if container.status == "paused":
            raise PermanentError(
                f"Worker {handle[:12]} is paused; resume it before running commands in it.", code="worker_paused"
            )
        api = engine_client().api
        limit = max(float(timeout), 0.01)
        # timeout(1) runs the command in a new process group and SIGKILLs the whole group at the
        # deadline; with KILL it dies with it, so the exec ends with status 137.
        command = ["timeout", "-s", "KILL", f"{limit:.3f}", *argv]
        what = f"Running {argv[0]!r} in worker {handle[:12]}"
        with _engine_errors(what):
            exec_id = api.exec_create(
                container.id,
                command,
                stdout=True,
                stderr=True,
                stdin=False,
                tty=False,
                environment=env,
                workdir=str(cwd),
            )["Id"]
            started = time.monotonic()
            sock = api.exec_start(exec_id, socket=True)

        def exited() -> bool:
            with _engine_errors(what):
                return not api.exec_inspect(exec_id).get("Running")

        try:
            stdout, stderr, finished = _read_demuxed(sock, deadline=started + limit + EXEC_GRACE_SECONDS, exited=exited)
        except OSError as exc:
            raise TransientError(f"{what}: lost the command's output stream: {exc}", code="docker_unreachable") from exc
        finally:
            _close(sock)
        out, err = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        if not finished:
            # The engine never closed the stream nor reported the command done: the worker was
            # paused under it, or the engine is stuck. timeout(1) kills the group once it runs.
            log.warning("docker_exec_stream_abandoned", container=handle[:12], argv0=argv[0], timeout=limit)
            return ExecResult(-9, out, err, timed_out=True)
        exit_code = self._exit_code(api, exec_id, what)
        if exit_code == 137 and time.monotonic() - started >= limit:
            return ExecResult(-9, out, err, timed_out=True)
        return ExecResult(exit_code, out, err)

    @staticmethod
    def _exit_code(api: docker.APIClient, exec_id: str, what: str) -> int:
        """The exec's exit status; the engine records it a moment after the stream closes."""
        deadline = time.monotonic() + 5
        while True:
            with _engine_errors(what):
                state = api.exec_inspect(exec_id)
            if not state.get("Running") and state.get("ExitCode") is not None:
                return int(state["ExitCode"])
            if time.monotonic() > deadline:
                raise TransientError(f"{what}: the engine reports no exit status.", code="docker_error")
            time.sleep(0.01)

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _get(handle: str, verb: str) -> Any:
        with _engine_errors(f"{verb} worker {handle[:12]}"):
            return engine_client().containers.get(handle)

    def _live(self, handle: str, verb: str) -> Any:
        """The container, if it is running or paused; WorkerGone if it is removed or stopped."""
        container = self._get(handle, verb)
        if container.status not in _LIVE:
            raise WorkerGone(f"{verb} worker {handle[:12]}: the container is {container.status}.")
        return container


def _factory_mounts() -> list[Mount]:
    """The factory's source tree, read-only at /opt/factory, minus anything secret in it."""
    base = Path(settings.BASE_DIR).resolve()
    mounts = [Mount(target=FACTORY_MOUNT, source=str(base), type="bind", read_only=True)]
    env_file = base / ".env"
    if env_file.is_file():
        mounts.append(Mount(target=f"{FACTORY_MOUNT}/.env", source="/dev/null", type="bind", read_only=True))
    # The factory's home (its database, broker, repositories, other workers' workspaces) when it
    # lies inside the tree, and the default home ``var/`` whatever FACTORY_HOME says now.
    for home in sorted({Path(settings.FACTORY_HOME).resolve(), base / "var"}):
        if home != base and home.is_relative_to(base) and home.is_dir():
            mounts.append(
                Mount(
                    target=f"{FACTORY_MOUNT}/{home.relative_to(base).as_posix()}",
                    source=None,
                    type="tmpfs",
                    read_only=True,
                )
            )
    return mounts


def _read_demuxed(sock: Any, *, deadline: float, exited: Callable[[], bool]) -> tuple[bytes, bytes, bool]:
    """Read an exec's multiplexed stream (frames with an 8-byte header: stream, size) until it
    ends, the command has exited, or ``deadline`` passes. Returns stdout, stderr and whether the
    command is done.

    A command can exit while something it left running in the background still holds its output
    open (``sh -c 'server &'``); the stream then never ends, so whenever it is quiet for a moment
    the engine is asked whether the command itself has exited, and if so what is left is drained
    briefly and reading stops.
    """
    raw = getattr(sock, "_sock", sock)
    buffer = bytearray()
    streams = {1: bytearray(), 2: bytearray()}
    done = False
    draining_until: float | None = None
    quiet = _QUIET_SECONDS
    while True:
        now = time.monotonic()
        if now >= deadline or (draining_until is not None and now >= draining_until):
            break
        wait = min(deadline, draining_until or deadline) - now
        # A TLS socket may hold decrypted bytes that select() cannot see.
        pending = getattr(raw, "pending", None)
        readable = (pending is not None and pending()) or select.select([raw], [], [], min(wait, quiet))[0]
        if not readable:
            if draining_until is None and exited():
                done = True
                draining_until = time.monotonic() + _DRAIN_SECONDS
            quiet = min(quiet * 1.5, _QUIET_MAX_SECONDS)  # a long quiet command is asked less often
            continue
        chunk = raw.recv(65536)
        if not chunk:
            done = True
            break
        buffer += chunk
        while len(buffer) >= 8:
            stream, size = struct.unpack(">BxxxL", buffer[:8])
            if len(buffer) < 8 + size:
                break
            streams.get(stream, streams[1]).extend(buffer[8 : 8 + size])
            del buffer[: 8 + size]
    return bytes(streams[1]), bytes(streams[2]), done


def _close(sock: Any) -> None:
    raw = getattr(sock, "_sock", sock)
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the engine
    for item in {id(sock): sock, id(raw): raw}.values():
        item.close()
