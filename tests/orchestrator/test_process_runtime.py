"""The process runtime on real process groups: create, exec, pause, resume, terminate."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from orchestrator.procs import pids_with_marker, process_state
from orchestrator.runtime.base import SESSION_MARKER, WorkerGone, WorkerSpec
from orchestrator.runtime.process import ProcessRuntime


@pytest.fixture
def runtime():
    rt = ProcessRuntime()
    handles: list[str] = []
    yield rt, handles
    for handle in handles:
        rt.terminate(handle)


def _env(tmp: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp)}


def test_exec_runs_in_the_workspace_inside_the_worker_group(runtime, tmp_path):
    rt, handles = runtime
    handle = rt.create(WorkerSpec(session_id=9001, workspace=tmp_path / "ws", env=_env(tmp_path)))
    handles.append(handle)
    result = rt.exec(
        handle,
        [sys.executable, "-c", "import os; print(os.getcwd(), os.getpgrp())"],
        cwd=tmp_path / "ws",
        env=_env(tmp_path),
        timeout=10,
    )
    cwd, pgid = result.stdout.split()
    assert result.ok
    assert cwd == str(tmp_path / "ws")
    assert pgid == handle
    assert int(handle) in pids_with_marker(SESSION_MARKER, "9001")


def test_exec_timeout_kills_the_command_and_says_so(runtime, tmp_path):
    rt, handles = runtime
    handle = rt.create(WorkerSpec(session_id=9002, workspace=tmp_path, env=_env(tmp_path)))
    handles.append(handle)
    started = time.monotonic()
    result = rt.exec(handle, ["sleep", "30"], cwd=tmp_path, env=_env(tmp_path), timeout=0.5)
    assert result.timed_out and not result.ok
    assert time.monotonic() - started < 10


def test_pause_really_stops_output_and_unpause_resumes_it(runtime, tmp_path):
    rt, handles = runtime
    handle = rt.create(WorkerSpec(session_id=9003, workspace=tmp_path, env=_env(tmp_path)))
    handles.append(handle)
    ticker = tmp_path / "ticks"
    # A process inside the worker that writes a tick every 50 ms, in the background.
    rt.exec(
        handle,
        ["sh", "-c", f"(while true; do echo x >> {ticker}; sleep 0.05; done) >/dev/null 2>&1 &"],
        cwd=tmp_path,
        env=_env(tmp_path),
        timeout=10,
    )
    time.sleep(0.3)
    rt.pause(handle)
    deadline = time.monotonic() + 5
    while process_state(int(handle)) != "T":  # the stop is delivered asynchronously
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    frozen = ticker.read_text().count("x")
    time.sleep(0.5)
    assert ticker.read_text().count("x") == frozen
    rt.unpause(handle)
    time.sleep(0.4)
    assert ticker.read_text().count("x") > frozen


def test_terminate_kills_everything_in_the_worker(runtime, tmp_path):
    rt, _ = runtime
    handle = rt.create(WorkerSpec(session_id=9004, workspace=tmp_path, env=_env(tmp_path)))
    rt.exec(handle, ["sh", "-c", "sleep 300 >/dev/null 2>&1 &"], cwd=tmp_path, env=_env(tmp_path), timeout=10)
    rt.pause(handle)
    rt.terminate(handle)
    deadline = time.monotonic() + 5
    while pids_with_marker(SESSION_MARKER, "9004") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids_with_marker(SESSION_MARKER, "9004") == []
    assert not rt.is_alive(handle)
    rt.terminate(handle)  # terminating a gone worker is not an error


def test_exec_in_a_gone_worker_raises_worker_gone(runtime, tmp_path):
    rt, _ = runtime
    handle = rt.create(WorkerSpec(session_id=9005, workspace=tmp_path, env=_env(tmp_path)))
    rt.terminate(handle)
    with pytest.raises(WorkerGone):
        rt.exec(handle, ["true"], cwd=tmp_path, env=_env(tmp_path), timeout=5)


def test_list_workers_finds_holders_not_the_commands_inside_them(runtime, tmp_path):
    rt, handles = runtime
    handle = rt.create(WorkerSpec(session_id=9006, workspace=tmp_path, env=_env(tmp_path)))
    handles.append(handle)
    rt.exec(
        handle,
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 &"],
        cwd=tmp_path,
        env={**_env(tmp_path), SESSION_MARKER: "9006"},
        timeout=10,
    )
    mine = [w for w in rt.list_workers() if w.session_id == 9006]
    assert [(w.handle, w.running) for w in mine] == [(handle, True)]
    rt.pause(handle)
    # SIGSTOP is delivered asynchronously: the group shows as stopped a moment later.
    deadline = time.monotonic() + 5
    while [w.running for w in rt.list_workers() if w.session_id == 9006] != [False]:
        assert time.monotonic() < deadline, "the paused worker still shows as running"
        time.sleep(0.05)
    stats = rt.stats(handle)
    assert stats.memory_bytes and stats.memory_bytes > 1_000_000


def test_a_missing_command_exits_127_like_a_shell(runtime, tmp_path):
    rt, handles = runtime
    handle = rt.create(WorkerSpec(session_id=9007, workspace=tmp_path, env=_env(tmp_path)))
    handles.append(handle)
    result = rt.exec(handle, ["no-such-command-here"], cwd=tmp_path, env=_env(tmp_path), timeout=5)
    assert result.exit_code == 127 and "no-such-command-here" in result.stderr
