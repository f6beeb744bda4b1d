"""The local deploy target: a release is a process group on loopback, on an internal port.

A release runs in its own session (so it outlives the Celery worker that started it) and carries
its deployment id and this installation's id in its environment: a release is found, stopped or
adopted by these markers whatever the database says, and never one of another installation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.procs import has_marker, pids_with_marker, process_alive, stop_group
from orchestrator.runtime.base import factory_instance
from projects import specs
from projects.specs import AcceptanceCheck, StartSpec

RELEASE_MARKER = "FACTORY_DEPLOYMENT"
# The installation a release belongs to (its own name: FACTORY_INSTANCE marks workers).
RELEASE_INSTANCE_MARKER = "FACTORY_RELEASE_INSTANCE"


class ReleaseError(Exception):
    pass


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str


def read_start_spec(release_dir: Path) -> StartSpec:
    try:
        return specs.read_start_spec(release_dir)
    except specs.StartSpecError as exc:
        raise ReleaseError(str(exc)) from exc


def health_path(release_dir: str | Path) -> str:
    """The path the release's factory.json names for its health check; /health without one."""
    try:
        return specs.read_start_spec(release_dir).health
    except specs.StartSpecError:
        return "/health"


def json_or_empty(body: str) -> dict:
    try:
        answer = json.loads(body)
    except json.JSONDecodeError:
        return {}
    return answer if isinstance(answer, dict) else {}


def start(*, deployment_id: int, release_dir: Path, port: int, host: str, env: dict[str, str]) -> int:
    """Start the release in its own process group; return its pid (= its process group id)."""
    spec = read_start_spec(release_dir)
    argv = [sys.executable if spec.start[0] in ("python", "python3") else spec.start[0], *spec.start[1:]]
    log = open(release_dir.parent / f"{release_dir.name}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            argv,
            cwd=release_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                "PYTHONUNBUFFERED": "1",
                **env,
                "PORT": str(port),
                "HOST": host,
                "RELEASE": str(deployment_id),
                RELEASE_MARKER: str(deployment_id),
                RELEASE_INSTANCE_MARKER: factory_instance(),
            },
        )
    finally:
        log.close()
    return proc.pid


def stop(*, deployment_id: int, pid: int | None, grace: float = 5.0) -> None:
    """Stop a release: the process group ``pid`` if it is still the release we started (pids get
    reused), and every other process of this installation carrying the deployment's marker (one
    started by an attempt killed before it recorded its pid). SIGTERM, then SIGKILL after
    ``grace`` seconds."""
    if pid and has_marker(pid, RELEASE_MARKER, str(deployment_id)):
        stop_group(pid, grace=grace)
    for group in sorted({_group_of(p) for p in release_pids(deployment_id)} - {None}):
        stop_group(group, grace=grace)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def release_pids(deployment_id: int | None = None) -> list[int]:
    """This installation's live release processes (of one deployment, or of any)."""
    instance = factory_instance()
    value = None if deployment_id is None else str(deployment_id)
    return [p for p in pids_with_marker(RELEASE_MARKER, value) if has_marker(p, RELEASE_INSTANCE_MARKER, instance)]


def release_of(pid: int) -> int | None:
    """The deployment id a release process carries."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    prefix = f"{RELEASE_MARKER}=".encode()
    for item in environ.split(b"\0"):
        if item.startswith(prefix) and item[len(prefix) :].isdigit():
            return int(item[len(prefix) :])
    return None


def wait_healthy(
    *,
    pid: int,
    url: str,
    path: str,
    release: str,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    ready: Callable[[dict], str | None] | None = None,
    waiting_for: str = "healthy",
    max_delay: float = 1.0,
) -> CheckResult:
    """Probe the health endpoint with backoff until it answers for *this* release, or time out.
    ``alive`` tells whether the release still runs (default: its process ``pid``); ``ready``, given
    the health answer of this release, says what it still waits for (None: ready)."""
    deadline = time.monotonic() + timeout
    delay, last = 0.05, "no answer yet"
    while time.monotonic() < deadline:
        if not (alive() if alive is not None else process_alive(pid)):
            return CheckResult(False, "the service process exited")
        status, body = http(url + path.lstrip("/"))
        if status == 200:
            answer = json_or_empty(body)
            if str(answer.get("release")) != release:
                last = f"{path} answered for release {answer.get('release')!r}, not {release!r}"
            elif ready is None or (last := ready(answer)) is None:
                return CheckResult(True, waiting_for)
        else:
            last = f"{path} answered {status}: {body[:200]}"
        time.sleep(delay)
        delay = min(delay * 2, max_delay)
    return CheckResult(False, f"not {waiting_for} after {timeout:.0f}s: {last}")


def run_acceptance(url: str, checks: list[AcceptanceCheck]) -> list[CheckResult]:
    results = []
    for check in checks:
        data = json.dumps(check.body).encode() if check.body is not None else None
        status, body = http(url + check.path.lstrip("/"), method=check.method, data=data)
        ok = status == check.expect_status and (check.expect_contains is None or check.expect_contains in body)
        results.append(CheckResult(ok, f"{check.method} {check.path} -> {status} {body[:200]}"))
    return results


def http(url: str, *, method: str = "GET", data: bytes | None = None, timeout: float = 5.0) -> tuple[int, str]:
    request = urllib.request.Request(
        url, method=method, data=data, headers={"Content-Type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)
