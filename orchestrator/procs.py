"""Small, careful helpers for processes we started (workers and local releases)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, T, Z, ...), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def process_alive(pid: int | None) -> bool:
    return bool(pid) and process_state(pid) not in (None, "Z", "X")


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def has_marker(pid: int, name: str, value: str) -> bool:
    """True if ``pid`` was started by us with environment variable ``name=value``.

    Guards every kill by pid against the pid having been reused by an unrelated process.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return f"{name}={value}".encode() in environ.split(b"\0")


def pids_with_marker(name: str, value: str | None = None) -> list[int]:
    """Every live process carrying the marker variable (any value when ``value`` is None)."""
    found = []
    prefix = f"{name}=".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix) and (value is None or item[len(prefix) :] == value.encode()):
                if process_alive(int(entry.name)):
                    found.append(int(entry.name))
                break
    return found


def stop_group(pgid: int, *, grace: float = 5.0) -> None:
    """SIGTERM a process group, then SIGKILL whatever is left after ``grace`` seconds."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not process_alive(pgid):
            break
        time.sleep(0.05)
    signal_group(pgid, signal.SIGKILL)
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
