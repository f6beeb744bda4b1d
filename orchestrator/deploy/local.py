"""The local deploy target: a release is a process group on loopback, on an internal port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestrator.procs import has_marker, process_alive, stop_group
from projects import specs
from projects.specs import AcceptanceCheck, StartSpec

RELEASE_MARKER = "FACTORY_DEPLOYMENT"


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
            },
        )
    finally:
        log.close()
    return proc.pid


def stop(*, deployment_id: int, pid: int | None) -> None:
    """Stop a release, only if ``pid`` is still the release we started (pids get reused)."""
    if pid and has_marker(pid, RELEASE_MARKER, str(deployment_id)):
        stop_group(pid)


def wait_healthy(*, pid: int, url: str, path: str, release: str, timeout: float) -> CheckResult:
    """Probe the health endpoint with backoff until it answers for *this* release, or time out."""
    deadline = time.monotonic() + timeout
    delay, last = 0.05, "no answer yet"
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return CheckResult(False, "the service process exited")
        status, body = http(url + path.lstrip("/"))
        if status == 200:
            try:
                answer = json.loads(body)
            except json.JSONDecodeError:
                answer = {}
            if str(answer.get("release")) == release:
                return CheckResult(True, "healthy")
            last = f"{path} answered for release {answer.get('release')!r}, not {release!r}"
        else:
            last = f"{path} answered {status}: {body[:200]}"
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    return CheckResult(False, f"not healthy after {timeout:.0f}s: {last}")


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
