"""Reading the JSON log file (LOG_FILE, written by config/logging.py): a run's lines by run_id.

Every process appends one JSON object per line; pipeline lines carry ``run_id``, ``stage`` and
``task_id``. Only the file's last ``SCAN_BYTES`` are read, so a page stays fast on a file that
has grown for weeks (older lines: ``jq 'select(.run_id == 42)' factory.jsonl``). The rotated
file (``<name>.1``, logrotate's default) is read too when the current one is short.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.conf import settings

SCAN_BYTES = 8 * 1024 * 1024


def _tail_lines(path: Path, budget: int) -> tuple[list[bytes], int]:
    """The last ``budget`` bytes of ``path`` as whole lines, and how many bytes were read."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - budget)
            handle.seek(start)
            data = handle.read()
    except OSError:
        return [], 0
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first one is cut
    return [line for line in lines if line.strip()], len(data)


def run_lines(run_id: int, *, limit: int = 300, path: str | None = None) -> list[dict]:
    """The latest ``limit`` log lines (parsed) that carry ``run_id``, oldest first; [] when no
    log file is configured. Lines that are not JSON are skipped."""
    name = path if path is not None else settings.LOG_FILE
    if not name:
        return []
    current = Path(name)
    lines, read = _tail_lines(current, SCAN_BYTES)
    if read < SCAN_BYTES:
        older, _ = _tail_lines(current.with_name(current.name + ".1"), SCAN_BYTES - read)
        lines = older + lines
    needle = f'"run_id": {int(run_id)}'.encode()
    quoted = f'"run_id": "{int(run_id)}"'.encode()  # bound as a string somewhere
    found = []
    for raw in lines:
        if needle not in raw and quoted not in raw:
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and str(line.get("run_id")) == str(run_id):
            found.append(line)
    return found[-limit:]
